//! Node configuration: `cairn.toml` on the boot partition (edited on a laptop after
//! flashing) merged over the copy persisted on the data partition.

use serde::Deserialize;
use std::net::Ipv4Addr;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Config {
    pub hostname: Option<String>,
    pub network: Network,
    pub console: Console,
    pub runtime: Runtime,
    pub update: Update,
}

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct Update {
    /// How long a slot on trial has to bring the node to Ready ("300", "90s", "5m").
    pub health_timeout: String,
}

impl Default for Update {
    fn default() -> Self {
        Update {
            health_timeout: "5m".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct Network {
    pub mode: String,
    /// `address/prefix` for static mode.
    pub address: Option<String>,
    pub gateway: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    /// Interface to configure; default: the first Ethernet interface.
    pub interface: Option<String>,
}

impl Default for Network {
    fn default() -> Self {
        Network {
            mode: "dhcp".into(),
            address: None,
            gateway: None,
            dns: Vec::new(),
            interface: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct Console {
    pub shell: bool,
}

impl Default for Console {
    fn default() -> Self {
        Console { shell: true }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct Runtime {
    /// "server", "agent" or "none".
    pub role: String,
    /// Extra arguments passed to `cairn server|agent`.
    pub args: Vec<String>,
}

impl Default for Runtime {
    fn default() -> Self {
        Runtime {
            role: "server".into(),
            args: Vec::new(),
        }
    }
}

/// Overlays `top` on `base`, table by table.
pub fn merge(base: &mut toml::Table, top: toml::Table) {
    for (k, v) in top {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(t)) => merge(b, t),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Parses a config text; problems are returned as one line to print, never a failed boot.
pub fn parse_table(text: &str, source: &str) -> Result<toml::Table, String> {
    text.parse::<toml::Table>()
        .map_err(|e| format!("{source}: {}", e.message().replace('\n', " ")))
}

pub fn from_table(table: toml::Table) -> Result<Config, String> {
    Config::deserialize(toml::Value::Table(table)).map_err(|e| e.message().replace('\n', " "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_partition_values_win_and_the_rest_is_kept() {
        let mut persisted = parse_table(
            "hostname = \"old\"\n[network]\nmode = \"static\"\naddress = \"10.0.0.2/24\"\n",
            "p",
        )
        .unwrap();
        let boot = parse_table("hostname = \"edge-1\"\n[network]\nmode = \"dhcp\"\n", "b").unwrap();
        merge(&mut persisted, boot);
        let cfg = from_table(persisted).unwrap();
        assert_eq!(cfg.hostname.as_deref(), Some("edge-1"));
        assert_eq!(cfg.network.mode, "dhcp");
        assert_eq!(cfg.network.address.as_deref(), Some("10.0.0.2/24"));
        assert!(cfg.console.shell);
    }

    #[test]
    fn errors_are_one_line() {
        let err = parse_table("hostname = \n", "/boot/cairn.toml").unwrap_err();
        assert!(err.starts_with("/boot/cairn.toml"));
        assert!(!err.contains('\n'));
    }
}
