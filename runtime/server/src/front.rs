//! The server's front: what it answers itself (node joins, node tunnels) before a request
//! reaches the Kubernetes API.

use crate::join::Joiner;
use crate::tunnel::Tunnels;
use axum::body::Body;
use axum::http::{Method, Request};
use axum::response::{IntoResponse, Response};
use cairn_api::status::ApiError;
use cairn_api::user::Identity;
use cairn_api::Api;
use http_body_util::BodyExt;
use std::sync::Arc;

pub struct Front {
    pub api: Api,
    /// Answers `POST /cairn/v1/join`; `None` serves no joins.
    pub joiner: Option<Arc<Joiner>>,
    /// The connected nodes' tunnels (shared with the API's pod streams).
    pub tunnels: Tunnels,
}

impl Front {
    /// Answers one request; `who` is None when the client did not authenticate.
    pub async fn serve(&self, who: Option<Identity>, req: Request<Body>) -> Response {
        match req.uri().path().trim_end_matches('/') {
            // Authenticated by the join token in the request itself.
            "/cairn/v1/join" => self.join(req).await,
            "/cairn/v1/tunnel" => match who {
                Some(who) => self.tunnel(&who, req),
                None => ApiError::unauthorized().into_response(),
            },
            _ => self.api.serve(who, req).await,
        }
    }

    async fn join(&self, req: Request<Body>) -> Response {
        if req.method() != Method::POST {
            return ApiError::method_not_allowed().into_response();
        }
        let Some(joiner) = self.joiner.clone() else {
            return ApiError::not_found_path().into_response();
        };
        let (parts, body) = req.into_parts();
        match http_body_util::Limited::new(body, 64 * 1024)
            .collect()
            .await
        {
            Ok(b) => joiner.handle(&parts.headers, &b.to_bytes()).await,
            Err(_) => ApiError::too_large().into_response(),
        }
    }

    /// A node's tunnel: only a node may open one, and only for itself.
    fn tunnel(&self, who: &Identity, req: Request<Body>) -> Response {
        let node = who
            .user
            .strip_prefix("system:node:")
            .filter(|_| who.groups.iter().any(|g| g == "system:nodes"));
        match node {
            Some(node) if req.method() == Method::GET => self.tunnels.accept(node.to_string(), req),
            Some(_) => ApiError::method_not_allowed().into_response(),
            None => ApiError::forbidden(
                "",
                "",
                "",
                format!(
                    "user {:?} is not a node and cannot open a node tunnel",
                    who.user
                ),
            )
            .into_response(),
        }
    }
}
