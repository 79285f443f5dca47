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
//!
//! Bounded: what waits to be written to one stream is at most
//! [`STREAM_QUEUE_MESSAGES`] messages and [`STREAM_QUEUE_BYTES`] bytes. A
//! stream that falls further behind (a client that posts but does not
//! read) is closed, logged once, and its session ends; later posts to it
//! get 404. rmcp's serve loop sends every reply as its own task, so a send
//! that waited for room would only move the queue there, unbounded.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use rmcp::model::{ClientJsonRpcMessage, ErrorCode, ErrorData, ServerJsonRpcMessage};
use rmcp::service::{RoleServer, ServiceExt};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::auth::RateLimited;
use super::jsonrpc_id::RequestIdScan;
use super::problem::Problem;
use super::query::{self, NoQuery};
use crate::audit::Origin;
use crate::auth::Principal;
use crate::limit::{RATE_LIMITED, UserLimit};
use crate::mcp::{Caller, EngramMcp};
use crate::service::MemoryService;

/// Posted messages that may wait for a session's handler to take them.
const INBOUND_QUEUE: usize = 64;

/// Replies that may wait to be written to one event stream. A stream with
/// more waiting is closed and its session ends.
pub const STREAM_QUEUE_MESSAGES: usize = 1024;

/// Bytes of replies (as JSON) that may wait to be written to one event
/// stream. One reply larger than this is still sent when nothing waits.
pub const STREAM_QUEUE_BYTES: usize = 16 * 1024 * 1024;

/// An open session: who opened it, the way into its handler, and the way
/// out to its stream.
struct Session {
    principal: Principal,
    inbound: mpsc::Sender<ClientJsonRpcMessage>,
    outbound: Outbound,
}

/// Open sessions by id.
#[derive(Clone)]
pub struct Sessions {
    open: Arc<Mutex<HashMap<String, Session>>>,
    service: Arc<MemoryService>,
    /// MCP calls per acting user, shared with `/mcp`.
    user_limit: Arc<UserLimit>,
    stop: CancellationToken,
}

impl Sessions {
    pub fn new(
        service: Arc<MemoryService>,
        user_limit: Arc<UserLimit>,
        stop: CancellationToken,
    ) -> Self {
        Self {
            open: Arc::default(),
            service,
            user_limit,
            stop,
        }
    }

    fn with_map<T>(&self, f: impl FnOnce(&mut HashMap<String, Session>) -> T) -> T {
        f(&mut self.open.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The session `id` when it is open and `principal` opened it.
    fn find(
        &self,
        id: &str,
        principal: &Principal,
    ) -> Option<(mpsc::Sender<ClientJsonRpcMessage>, Outbound)> {
        self.with_map(|m| {
            m.get(id)
                .filter(|s| s.principal == *principal && !s.outbound.ended.is_cancelled())
                .map(|s| (s.inbound.clone(), s.outbound.clone()))
        })
    }
}

/// The way out to one event stream: replies encoded and queued within the
/// bounds. Never waits: a full queue ends the session instead.
#[derive(Clone)]
struct Outbound {
    session: Arc<str>,
    queue: mpsc::Sender<String>,
    /// Bytes of JSON in `queue`.
    queued: Arc<AtomicUsize>,
    /// Cancelled when the session ends, for any reason: stops its handler
    /// and its stream.
    ended: CancellationToken,
    overflowed: Arc<AtomicBool>,
}

impl Outbound {
    /// Queues `message` for the stream, or ends the session when the
    /// stream is too far behind. Messages for an ended session are dropped.
    fn push(&self, message: &ServerJsonRpcMessage) {
        if self.ended.is_cancelled() {
            return;
        }
        let json = match serde_json::to_string(message) {
            Ok(json) => json,
            Err(e) => {
                tracing::warn!(session = %self.session, error = %e, "a reply could not be encoded");
                return;
            }
        };
        let size = json.len();
        let before = self.queued.fetch_add(size, Ordering::AcqRel);
        if before > 0 && before + size > STREAM_QUEUE_BYTES {
            self.queued.fetch_sub(size, Ordering::AcqRel);
            return self.overflow();
        }
        if self.queue.try_send(json).is_err() {
            self.queued.fetch_sub(size, Ordering::AcqRel);
            self.overflow();
        }
    }

    fn overflow(&self) {
        if !self.overflowed.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                session = %self.session,
                max_messages = STREAM_QUEUE_MESSAGES,
                max_bytes = STREAM_QUEUE_BYTES,
                "an SSE client fell behind reading its stream: the stream is closed and its \
                 session ended"
            );
        }
        self.ended.cancel();
    }
}

/// What a session's handler is served over: posted messages in, the
/// bounded [`Outbound`] out.
struct Channels {
    inbound: mpsc::Receiver<ClientJsonRpcMessage>,
    outbound: Outbound,
}

impl rmcp::transport::Transport<RoleServer> for Channels {
    type Error = Infallible;

    fn send(
        &mut self,
        item: ServerJsonRpcMessage,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        self.outbound.push(&item);
        std::future::ready(Ok(()))
    }

    fn receive(&mut self) -> impl Future<Output = Option<ClientJsonRpcMessage>> + Send {
        self.inbound.recv()
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        self.inbound.close();
        Ok(())
    }
}

/// Removes the session when its event stream is dropped (the client left,
/// or the stream was closed).
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

/// `GET /sse`: a new session and its event stream. It takes no query
/// parameters: any is refused (400) before a session opens.
pub async fn open(
    State(sessions): State<Sessions>,
    Extension(principal): Extension<Principal>,
    origin: Option<Extension<Origin>>,
    uri: Uri,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Problem> {
    query::read::<NoQuery>(&uri).map_err(|text| {
        Problem::invalid(None, format!("{text}; open a stream with a plain GET /sse"))
    })?;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let (to_handler, from_client) = mpsc::channel::<ClientJsonRpcMessage>(INBOUND_QUEUE);
    let (to_stream, from_handler) = mpsc::channel::<String>(STREAM_QUEUE_MESSAGES);
    let ended = sessions.stop.child_token();
    let outbound = Outbound {
        session: id.as_str().into(),
        queue: to_stream,
        queued: Arc::default(),
        ended: ended.clone(),
        overflowed: Arc::default(),
    };
    let session = Session {
        principal: principal.clone(),
        inbound: to_handler,
        outbound: outbound.clone(),
    };
    sessions.with_map(|m| m.insert(id.clone(), session));

    let origin = origin.map_or(
        Origin {
            transport: "sse",
            client_addr: None,
        },
        |Extension(origin)| origin,
    );
    let handler = EngramMcp::new(sessions.service.clone(), Caller::Fixed(principal))
        .with_user_limit(sessions.user_limit.clone())
        .with_origin(origin);
    let channels = Channels {
        inbound: from_client,
        outbound: outbound.clone(),
    };
    let stop = ended.clone();
    let session = id.clone();
    tokio::spawn(async move {
        match handler.serve_with_ct(channels, stop).await {
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
        handler: ended.clone(),
    };
    let endpoint = Event::default()
        .event("endpoint")
        .data(format!("/messages?sessionId={id}"));
    let replies = futures::stream::unfold(
        (from_handler, outbound.queued, close),
        |(mut rx, queued, close)| async move {
            // Ended (it fell behind, or the server stops): the stream
            // closes now, without what waits.
            let json = tokio::select! {
                biased;
                () = close.handler.cancelled() => return None,
                json = rx.recv() => json?,
            };
            queued.fetch_sub(json.len(), Ordering::AcqRel);
            let event = Event::default().event("message").data(json);
            Some((Ok(event), (rx, queued, close)))
        },
    );
    let events = futures::stream::once(async move { Ok(endpoint) }).chain(replies);
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// The query of a post: the session, and nothing else.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Target {
    #[serde(rename = "sessionId")]
    session_id: String,
}

/// How many bytes of an oversized post are still read to find its id;
/// past this it is left unanswered on the stream (the 413 stands).
const SCAN_BYTES: usize = 16 * super::MAX_BODY_BYTES;

/// `POST /messages?sessionId=ID`: one JSON-RPC message for the session's
/// handler; its answer comes on the event stream. 202 when handed over.
///
/// A post refused for its size (413), the key's rate limit (429), its query
/// string (400: anything but one `sessionId`, or not UTF-8) or as not a
/// JSON-RPC message (400) is also answered on the stream, with a JSON-RPC
/// error carrying the request's id when it can be read: the client waits
/// there, not on the POST. (A query refused as a whole still names its
/// session when `sessionId` appears once.) The body is read in chunks,
/// keeping at most [`super::MAX_BODY_BYTES`] of it, and its id is found as
/// it passes.
pub async fn post(
    State(sessions): State<Sessions>,
    Extension(principal): Extension<Principal>,
    limited: Option<Extension<RateLimited>>,
    uri: Uri,
    body: axum::body::Body,
) -> Response {
    let target = query::read::<Target>(&uri);
    let session_id = match &target {
        Ok(target) => Some(target.session_id.clone()),
        Err(_) => query::lone(&uri, "sessionId"),
    };
    let session = session_id.and_then(|id| sessions.find(&id, &principal));
    let answer = |id: Option<rmcp::model::RequestId>, error: ErrorData| {
        if let (Some(id), Some((_, outbound))) = (id, &session) {
            outbound.push(&ServerJsonRpcMessage::error(error, Some(id)));
        }
    };
    let posted = match Posted::read(body, super::MAX_BODY_BYTES, SCAN_BYTES).await {
        Ok(posted) => posted,
        Err(e) => {
            return Problem::invalid(None, format!("the body could not be read: {e}"))
                .into_response();
        }
    };
    if let Some(Extension(RateLimited(seconds))) = limited {
        answer(
            posted.request_id(),
            ErrorData::new(
                ErrorCode(RATE_LIMITED),
                format!("rate limit reached for this API key: retry after {seconds} seconds"),
                Some(serde_json::json!({ "retry_after_secs": seconds })),
            ),
        );
        return Problem::rate_limited(seconds).into_response();
    }
    if let Err(text) = target {
        let detail = format!(
            "{text}; post to the endpoint the stream named, /messages?sessionId=ID, \
             with nothing else in the query"
        );
        answer(
            posted.request_id(),
            ErrorData::new(ErrorCode::INVALID_REQUEST, detail.clone(), None),
        );
        return Problem::invalid(None, detail).into_response();
    }
    let Some(bytes) = posted.body.as_ref() else {
        let detail = format!(
            "the message is larger than {} bytes; send less text per call",
            super::MAX_BODY_BYTES
        );
        answer(
            posted.request_id(),
            ErrorData::new(ErrorCode::INVALID_REQUEST, detail.clone(), None),
        );
        return Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", detail)
            .into_response();
    };
    let Some((inbound, _)) = &session else {
        return Problem::not_found(
            "no such session for this key: open one with GET /sse and post to the endpoint \
             it names, with the same key",
        )
        .into_response();
    };
    let message: ClientJsonRpcMessage = match serde_json::from_slice(bytes) {
        Ok(message) => message,
        Err(e) => {
            let code = if serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok() {
                ErrorCode::INVALID_REQUEST
            } else {
                ErrorCode::PARSE_ERROR
            };
            let detail = format!("the body is not a JSON-RPC message: {e}");
            answer(
                posted.request_id(),
                ErrorData::new(code, detail.clone(), None),
            );
            return Problem::invalid(None, detail).into_response();
        }
    };
    match inbound.send(message).await {
        Ok(()) => StatusCode::ACCEPTED.into_response(),
        Err(_) => Problem::not_found("the session has closed").into_response(),
    }
}

/// A posted body as read: whole when within the limit, and what
/// [`RequestIdScan`] found in it.
struct Posted {
    /// None: the body was larger than the limit.
    body: Option<axum::body::Bytes>,
    scan: RequestIdScan,
}

impl Posted {
    /// Reads `body`, keeping it when it fits in `limit` bytes and scanning
    /// at most `scan_limit` bytes for the id.
    async fn read(
        body: axum::body::Body,
        limit: usize,
        scan_limit: usize,
    ) -> Result<Self, axum::Error> {
        let mut chunks = body.into_data_stream();
        let mut kept = Some(Vec::new());
        let mut scan = RequestIdScan::default();
        let mut seen = 0usize;
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            seen += chunk.len();
            scan.feed(&chunk);
            match &mut kept {
                Some(buffer) if buffer.len() + chunk.len() <= limit => {
                    buffer.extend_from_slice(&chunk);
                }
                _ => kept = None,
            }
            if seen > scan_limit || (kept.is_none() && scan.done()) {
                break;
            }
        }
        Ok(Self {
            body: kept.map(axum::body::Bytes::from),
            scan,
        })
    }

    /// The id to answer, when the body is a request whose id could be read.
    fn request_id(&self) -> Option<rmcp::model::RequestId> {
        self.scan.request_id()
    }
}
