//! `http`: who may call the HTTP transport and how much (`auth`,
//! `allowed_hosts`, `allowed_origins`, the rate limits per key and per
//! acting user, `request_timeout_secs`).

use serde::Deserialize;

use super::layers::{Choice, ConfigError, Layers, Range};

/// Per acting user: what one client needs (see `crate::limit`). For REST,
/// 120 a minute: a person trying the README's examples by hand (a dozen
/// calls, some repeated) never meets it, nor does an app that remembers and
/// searches on every chat turn of a user, while one user's runaway script
/// is still held to 2 requests a second. (It was 10, which the README's
/// own quick start ran into within a minute.)
pub const DEFAULT_REST_USER_RATE_LIMIT: u32 = 120;
pub const DEFAULT_MCP_USER_RATE_LIMIT: u32 = 600;
/// Per API key: a hundred users' worth, so that one admin key serving many
/// users is held to each user's allowance rather than capped as one user,
/// while a runaway or leaked key is still bounded.
pub const DEFAULT_REST_RATE_LIMIT: u32 = 100 * DEFAULT_REST_USER_RATE_LIMIT;
pub const DEFAULT_MCP_RATE_LIMIT: u32 = 100 * DEFAULT_MCP_USER_RATE_LIMIT;
pub const DEFAULT_REQUEST_TIMEOUT_SECS: u64 = 120;
pub const DEFAULT_MCP_SESSIONS_PER_KEY: u32 = 64;
/// `Host` values answered unless configured: the loopback names.
pub const DEFAULT_ALLOWED_HOSTS: &[&str] = &["localhost", "127.0.0.1", "::1"];

const PER_KEY: &str = " requests per minute per key, 0 for no limit";
const PER_USER: &str = " requests per minute per acting user, 0 for no limit";
pub(super) const REST_RATE_LIMIT: Range<u32> =
    Range::new(DEFAULT_REST_RATE_LIMIT, 0, 1_000_000).note(PER_KEY);
pub(super) const MCP_RATE_LIMIT: Range<u32> =
    Range::new(DEFAULT_MCP_RATE_LIMIT, 0, 1_000_000).note(PER_KEY);
pub(super) const REST_USER_RATE_LIMIT: Range<u32> =
    Range::new(DEFAULT_REST_USER_RATE_LIMIT, 0, 1_000_000).note(PER_USER);
pub(super) const MCP_USER_RATE_LIMIT: Range<u32> =
    Range::new(DEFAULT_MCP_USER_RATE_LIMIT, 0, 1_000_000).note(PER_USER);
pub(super) const MCP_SESSIONS_PER_KEY: Range<u32> =
    Range::new(DEFAULT_MCP_SESSIONS_PER_KEY, 1, 100_000).note(" open /mcp sessions per key");
pub(super) const REQUEST_TIMEOUT_SECS: Range<u64> =
    Range::new(DEFAULT_REQUEST_TIMEOUT_SECS, 1, 3600);

/// The file keys (and, upper-cased after `ENGRAM_`, the variables) read here.
pub(super) const KEYS: &[&str] = &[
    "auth",
    "allowed_hosts",
    "allowed_origins",
    "rest_rate_limit",
    "mcp_rate_limit",
    "rest_user_rate_limit",
    "mcp_user_rate_limit",
    "request_timeout_secs",
    "mcp_sessions_per_key",
];

/// Who may call the HTTP transport.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// API keys (`Authorization: Bearer`).
    #[default]
    Keys,
    /// Anyone who can connect; allowed only on a loopback bind.
    None,
}

impl Choice for AuthMode {
    const CHOICES: &'static [(&'static str, Self)] = &[("keys", Self::Keys), ("none", Self::None)];
}

/// The HTTP transport. Invariant: `allowed_hosts` is not empty and holds
/// lower-case names; `allowed_origins` are lower-case `scheme://host[:port]`.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpConfig {
    /// Who may call the HTTP transport.
    pub auth: AuthMode,
    /// `Host` values the HTTP transport answers (`name` or `name:port`);
    /// anything else is refused, which stops DNS-rebinding pages.
    pub allowed_hosts: Vec<String>,
    /// Browser origins (`https://app.example.com`) allowed to call the HTTP
    /// transport; CORS is answered for these only. Empty (the default): no
    /// CORS, and a request carrying an `Origin` must come from an allowed host.
    pub allowed_origins: Vec<String>,
    /// REST requests per minute per API key (0: unlimited), whichever
    /// users it acts for.
    pub rest_rate_limit: u32,
    /// MCP requests per minute per API key (0: unlimited), whichever users
    /// it acts for.
    pub mcp_rate_limit: u32,
    /// REST requests per minute per acting user (0: unlimited), whichever
    /// keys act for them.
    pub rest_user_rate_limit: u32,
    /// MCP requests per minute per acting user (0: unlimited); agents call
    /// in bursts.
    pub mcp_user_rate_limit: u32,
    /// Longest a REST request may take before it is answered 503.
    pub request_timeout_secs: u64,
    /// Streamable HTTP sessions one key may hold open at once (each costs
    /// about 60 KB until it is closed or idles out).
    pub mcp_sessions_per_key: u32,
}

impl HttpConfig {
    pub(super) fn load(src: &Layers<'_>) -> Result<Self, ConfigError> {
        // Compared with the request's lower-cased `Host`, so lower-cased here.
        let allowed_hosts: Vec<String> = match src.list("allowed_hosts")? {
            Some(hosts) => hosts
                .iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .collect(),
            None => DEFAULT_ALLOWED_HOSTS
                .iter()
                .map(|h| h.to_string())
                .collect(),
        };
        if allowed_hosts.is_empty() || allowed_hosts.iter().any(|h| h.is_empty()) {
            return Err(src.invalid(
                "allowed_hosts",
                "list at least one host name (comma-separated), e.g. localhost,memory.example.com",
            ));
        }
        let allowed_origins = src
            .list("allowed_origins")?
            .unwrap_or_default()
            .iter()
            .map(|o| origin(src, o))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            auth: src.choice("auth", AuthMode::Keys)?,
            allowed_hosts,
            allowed_origins,
            rest_rate_limit: src.number("rest_rate_limit", &REST_RATE_LIMIT)?,
            mcp_rate_limit: src.number("mcp_rate_limit", &MCP_RATE_LIMIT)?,
            rest_user_rate_limit: src.number("rest_user_rate_limit", &REST_USER_RATE_LIMIT)?,
            mcp_user_rate_limit: src.number("mcp_user_rate_limit", &MCP_USER_RATE_LIMIT)?,
            mcp_sessions_per_key: src.number("mcp_sessions_per_key", &MCP_SESSIONS_PER_KEY)?,
            request_timeout_secs: src.number("request_timeout_secs", &REQUEST_TIMEOUT_SECS)?,
        })
    }
}

/// A browser origin as sent in `Origin`: `scheme://host[:port]`, lowercase,
/// nothing after the authority.
fn origin(src: &Layers<'_>, raw: &str) -> Result<String, ConfigError> {
    let origin = raw.trim().trim_end_matches('/').to_ascii_lowercase();
    let authority = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"));
    match authority {
        Some(a) if !a.is_empty() && !a.contains(['/', '?', '#', '*', ' ']) => Ok(origin),
        _ => Err(src.invalid(
            "allowed_origins",
            format!(
                "'{}' is not an origin; list them as scheme://host[:port], comma-separated, \
                 e.g. https://app.example.com,http://localhost:3000 (no wildcards)",
                raw.trim()
            ),
        )),
    }
}
