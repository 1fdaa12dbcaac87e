//! Random secrets: node passwords, tokens.

/// A fresh random secret, hex encoded.
pub fn random_secret(bytes: usize) -> std::io::Result<String> {
    let mut buf = vec![0u8; bytes];
    getrandom::getrandom(&mut buf).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(hex::encode(buf))
}
