//! The legacy HTTP+SSE transport (MCP 2024-11-05), which many clients still
//! speak: `GET /sse` opens an event stream whose first event, `endpoint`,
//! names where to post (`/messages?sessionId=ID`); every JSON-RPC message
//! the client posts there is answered on the stream as a `message` event.
//!
//! rmcp has no SSE server, so each stream gets its own [`EngramMcp`] served
//! over a pair of channels (rmcp's Sink + Stream transport). Invariant: a
//! session lives exactly as long as its event stream; when the client goes
//! away the session is removed and its handler stops, and a post to an
//! unknown or closed session is refused (404), never queued.
//!
//! The session acts as the principal that opened it: posts must carry the
//! same key (a post with another key is answered as if the session did not
//! exist), so a leaked session id is no use without the key.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Extension;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use rmcp::ServiceExt;
use rmcp::model::{ClientJsonRpcMessage, ServerJsonRpcMessage};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, PollSender};

use super::problem::Problem;
use crate::auth::Principal;
use crate::mcp::{Caller, EngramMcp};
use crate::service::MemoryService;

/// Messages a session may have waiting in either direction.
const QUEUE: usize = 64;

/// An open session: who opened it, and the way into its handler.
struct Session {
    principal: Principal,
    inbound: mpsc::Sender<ClientJsonRpcMessage>,
}

/// Open sessions by id.
#[derive(Clone)]
pub struct Sessions {
    open: Arc<Mutex<HashMap<String, Session>>>,
    service: Arc<MemoryService>,
    stop: CancellationToken,
}

impl Sessions {
    pub fn new(service: Arc<MemoryService>, stop: CancellationToken) -> Self {
        Self {
            open: Arc::default(),
            service,
            stop,
        }
    }

    fn with_map<T>(&self, f: impl FnOnce(&mut HashMap<String, Session>) -> T) -> T {
        f(&mut self.open.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// Removes the session when its event stream is dropped (the client left).
struct Close {
    sessions: Sessions,
    id: String,
    handler: CancellationToken,
}

impl Drop for Close {
    fn drop(&mut self) {
        self.sessions.with_map(|m| m.remove(&self.id));
        self.handler.cancel();
        tracing::debug!(session = %self.id, "SSE session closed");
    }
}

/// `GET /sse`: a new session and its event stream.
pub async fn open(
    State(sessions): State<Sessions>,
    Extension(principal): Extension<Principal>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let (to_handler, from_client) = mpsc::channel::<ClientJsonRpcMessage>(QUEUE);
    let (to_client, from_handler) = mpsc::channel::<ServerJsonRpcMessage>(QUEUE);
    let session = Session {
        principal: principal.clone(),
        inbound: to_handler,
    };
    sessions.with_map(|m| m.insert(id.clone(), session));

    let handler_stop = sessions.stop.child_token();
    let handler = EngramMcp::new(sessions.service.clone(), Caller::Fixed(principal));
    let incoming = Box::pin(futures::stream::unfold(from_client, |mut rx| async move {
        rx.recv().await.map(|m| (m, rx))
    }));
    let outgoing = PollSender::new(to_client);
    let stop = handler_stop.clone();
    let session = id.clone();
    tokio::spawn(async move {
        match handler.serve_with_ct((outgoing, incoming), stop).await {
            Ok(running) => {
                let _ = running.waiting().await;
            }
            Err(e) => {
                tracing::info!(session = %session, error = %e, "SSE session ended before initializing")
            }
        }
    });

    let close = Close {
        sessions: sessions.clone(),
        id: id.clone(),
        handler: handler_stop.clone(),
    };
    let endpoint = Event::default()
        .event("endpoint")
        .data(format!("/messages?sessionId={id}"));
    let shutdown = sessions.stop.clone();
    let replies = futures::stream::unfold(
        (from_handler, close, shutdown),
        |(mut rx, close, shutdown)| async move {
            let message = tokio::select! {
                message = rx.recv() => message?,
                () = shutdown.cancelled() => return None,
            };
            let event = match serde_json::to_string(&message) {
                Ok(json) => Event::default().event("message").data(json),
                Err(e) => {
                    tracing::warn!(session = %close.id, error = %e, "a reply could not be encoded");
                    Event::default().comment("a reply could not be encoded")
                }
            };
            Some((Ok(event), (rx, close, shutdown)))
        },
    );
    let events = futures::stream::once(async move { Ok(endpoint) }).chain(replies);
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

#[derive(Deserialize)]
pub struct Target {
    #[serde(rename = "sessionId")]
    session_id: String,
}

/// `POST /messages?sessionId=ID`: one JSON-RPC message for the session's
/// handler; its answer comes on the event stream. 202 when handed over.
pub async fn post(
    State(sessions): State<Sessions>,
    Extension(principal): Extension<Principal>,
    Query(target): Query<Target>,
    body: axum::body::Bytes,
) -> Response {
    let inbound = sessions.with_map(|m| {
        m.get(&target.session_id)
            .filter(|s| s.principal == principal)
            .map(|s| s.inbound.clone())
    });
    let Some(inbound) = inbound else {
        return Problem::not_found(
            "no such session for this key: open one with GET /sse and post to the endpoint \
             it names, with the same key",
        )
        .into_response();
    };
    let message: ClientJsonRpcMessage = match serde_json::from_slice(&body) {
        Ok(message) => message,
        Err(e) => {
            return Problem::invalid(None, format!("the body is not a JSON-RPC message: {e}"))
                .into_response();
        }
    };
    match inbound.send(message).await {
        Ok(()) => StatusCode::ACCEPTED.into_response(),
        Err(_) => Problem::not_found("the session has closed").into_response(),
    }
}
