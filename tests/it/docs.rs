//! The docs, run: every page (README.md and docs/*.md) is read as a user
//! reads it, and what it shows is checked against the real thing.
//!
//! * Fenced blocks whose info string is `sh runnable` or `python runnable`
//!   (optionally with `expect=WORD` or `expect="WORDS"`: text the block
//!   must print) run, in page order,
//!   as one bash script per page (so a server started in one block serves
//!   the next), with `set -euo pipefail`, the built `engram` first on
//!   `PATH`, a scratch `HOME` and XDG directories, and `mcp.json` in the
//!   working directory. `npx @modelcontextprotocol/inspector@0.15.0` is the
//!   pinned Inspector CLI that scripts/test.sh installs; Python blocks run
//!   in the virtualenv it makes (ENGRAM_DOCS_VENV: the MCP Python SDK,
//!   pinned). A page fails when
//!   its script exits non-zero or runs past [`PAGE_TIMEOUT`]; the message
//!   names the block. Background jobs are killed when the script ends.
//!   Plain `sh` blocks are shown to readers but not run (they need Docker,
//!   a cloud service, or `cargo install`).
//! * `json mcp-servers` blocks (Claude Desktop, Cursor, Claude Code) and
//!   `json vscode-servers` blocks (VS Code's `.vscode/mcp.json`) parse, and
//!   have exactly the shape those clients load; `mcp.json` at the root is an
//!   `mcp-servers` file.
//! * The generated parts (`<!-- generated: engram reference NAME -->` up
//!   to `<!-- end generated -->`) are what `engram reference NAME` prints
//!   now; with `ENGRAM_BLESS_DOCS=1` the pages are rewritten instead.
//! * Every relative link points at a file that exists, and every `#anchor`
//!   at a heading of that page.
//!
//! Pages run one after another: examples use the default port, 8765.

use std::collections::BTreeSet;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const ENGRAM: &str = env!("CARGO_BIN_EXE_engram");
const INSPECTOR_PACKAGE: &str = "@modelcontextprotocol/inspector@0.15.0";
/// The longest one page's examples may take together.
const PAGE_TIMEOUT: Duration = Duration::from_secs(240);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// README.md, then docs/*.md by name.
fn pages() -> Vec<PathBuf> {
    let mut pages: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .expect("read docs/")
        .map(|entry| entry.expect("a docs/ entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "md"))
        .collect();
    pages.sort();
    pages.insert(0, repo().join("README.md"));
    pages
}

fn relative(path: &Path) -> String {
    path.strip_prefix(repo())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// A fenced block: where it starts (1-based line of the fence), its info
/// string and its text.
struct Block {
    line: usize,
    info: String,
    text: String,
}

fn blocks(markdown: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut open: Option<(usize, String, String, String)> = None;
    for (index, line) in markdown.lines().enumerate() {
        let trimmed = line.trim_start();
        match open.as_mut() {
            None => {
                for fence in ["```", "~~~"] {
                    if let Some(info) = trimmed.strip_prefix(fence) {
                        let info = info.trim_start_matches(['`', '~']).trim().to_owned();
                        open = Some((index + 1, fence.to_owned(), info, String::new()));
                        break;
                    }
                }
            }
            Some((start, fence, info, text)) => {
                if trimmed.starts_with(fence.as_str())
                    && trimmed.trim_matches(['`', '~']).is_empty()
                {
                    blocks.push(Block {
                        line: *start,
                        info: std::mem::take(info),
                        text: std::mem::take(text),
                    });
                    open = None;
                } else {
                    text.push_str(line);
                    text.push('\n');
                }
            }
        }
    }
    blocks
}

/// A directory with `npx` mapping the pinned Inspector to the installed CLI
/// (scripts/test.sh sets ENGRAM_INSPECTOR_CLI), else to the real npx.
fn npx_shim(dir: &Path) -> PathBuf {
    let bin = dir.join("shim");
    std::fs::create_dir_all(&bin).expect("create the shim dir");
    let script = format!(
        "#!/bin/sh\n\
         if [ \"$1\" = \"{INSPECTOR_PACKAGE}\" ] && [ -n \"${{ENGRAM_INSPECTOR_CLI:-}}\" ]; then\n\
         \x20   shift; exec node \"$ENGRAM_INSPECTOR_CLI\" \"$@\"\n\
         fi\n\
         exec \"{}\" --yes \"$@\"\n",
        which("npx").unwrap_or_else(|| "npx".into()).display()
    );
    let shim = bin.join("npx");
    std::fs::write(&shim, script).expect("write the npx shim");
    let mut permissions = std::fs::metadata(&shim)
        .expect("stat the shim")
        .permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
    std::fs::set_permissions(&shim, permissions).expect("make the shim executable");
    bin
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(program))
            .find(|candidate| candidate.is_file())
    })
}

/// What a runnable block is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Language {
    Shell,
    Python,
}

/// A runnable block's info string: `sh runnable` or `python runnable`,
/// optionally followed by `expect=WORD` or `expect="SOME WORDS"`, text its
/// output must hold.
fn runnable(info: &str) -> Option<(Language, Option<String>)> {
    let (language, rest) = if let Some(rest) = info.strip_prefix("sh runnable") {
        (Language::Shell, rest)
    } else {
        (Language::Python, info.strip_prefix("python runnable")?)
    };
    if !(rest.is_empty() || rest.starts_with(' ')) {
        return None;
    }
    let expect = rest
        .trim()
        .strip_prefix("expect=")
        .map(|e| e.trim_matches('"').to_owned());
    Some((language, expect))
}

/// The virtualenv the Python examples run in (scripts/test.sh makes it,
/// with the MCP Python SDK pinned), as ENGRAM_DOCS_VENV names it.
fn docs_venv() -> PathBuf {
    let venv = std::env::var_os("ENGRAM_DOCS_VENV").map(PathBuf::from);
    match venv {
        Some(venv) if venv.join("bin/python").is_file() => venv,
        _ => panic!(
            "ENGRAM_DOCS_VENV does not name a virtualenv; run scripts/test.sh, which makes \
             one with the MCP Python SDK the docs' Python examples use"
        ),
    }
}

/// Single-quoted for bash.
fn quoted(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

/// The page's runnable blocks as one script: each preceded by where it is
/// (for the failure message), its output shown and kept, and checked for
/// what the block expects.
fn script(page: &Path, blocks: &[(&Block, Language, Option<String>)]) -> String {
    let mut script = String::from(
        "set -euo pipefail\n\
         BLOCK=start\n\
         OUT=$(mktemp -d)\n\
         trap 'echo \"docs: the example at $BLOCK failed\" >&2' ERR\n\
         trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true' EXIT\n",
    );
    for (n, (block, language, expect)) in blocks.iter().enumerate() {
        let at = format!("{}:{}", relative(page), block.line);
        let code = match language {
            Language::Shell => block.text.clone(),
            Language::Python => {
                format!("python3 - <<'ENGRAM_DOCS_PY'\n{}ENGRAM_DOCS_PY", block.text)
            }
        };
        script.push_str(&format!(
            "BLOCK={}\necho \"==> $BLOCK\" >&2\n{{\n{code}\n}} > \"$OUT/{n}\"\ncat \"$OUT/{n}\"\n",
            quoted(&at),
        ));
        if let Some(expect) = expect {
            script.push_str(&format!(
                "grep -qF -- {} \"$OUT/{n}\" || {{ echo \"docs: the example at $BLOCK printed no \"{} >&2; exit 1; }}\n",
                quoted(expect),
                quoted(expect),
            ));
        }
    }
    script
}

/// Runs `script` in a scratch home; Err with what it printed when it fails.
fn run_page(page: &Path, script: &str, python: bool) -> Result<(), String> {
    let scratch = tempfile::tempdir().expect("create a scratch dir");
    let root = scratch.path();
    let (home, work) = (root.join("home"), root.join("work"));
    for dir in [&home, &work] {
        std::fs::create_dir_all(dir).expect("create the scratch dirs");
    }
    std::fs::copy(repo().join("mcp.json"), work.join("mcp.json")).expect("copy mcp.json");
    let engram_dir = Path::new(ENGRAM).parent().expect("the binary's dir");
    let venv_bin = python.then(|| docs_venv().join("bin"));
    let path = std::env::join_paths(
        [engram_dir.to_path_buf(), npx_shim(root)]
            .into_iter()
            .chain(venv_bin)
            .chain(std::env::split_paths(
                &std::env::var_os("PATH").unwrap_or_default(),
            )),
    )
    .expect("join PATH");
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(script)
        .current_dir(&work)
        .env_clear()
        .env("PATH", path)
        .env("HOME", &home)
        .env("XDG_DATA_HOME", home.join(".local/share"))
        .env("XDG_CACHE_HOME", home.join(".cache"))
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("LANG", "C.UTF-8")
        .envs(crate::common::HERMETIC)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout takes the servers it started too.
        .process_group(0);
    if let Some(cli) = std::env::var_os("ENGRAM_INSPECTOR_CLI") {
        cmd.env("ENGRAM_INSPECTOR_CLI", cli);
    }
    let mut child = cmd.spawn().expect("run bash");
    let (mut out, mut err) = (child.stdout.take(), child.stderr.take());
    let readers = [
        std::thread::spawn(move || drain(out.as_mut())),
        std::thread::spawn(move || drain(err.as_mut())),
    ];
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for bash") {
            break Some(status);
        }
        if started.elapsed() > PAGE_TIMEOUT {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // Whatever the script left running (a server it started) holds the
    // output pipes open: the whole process group goes (a negative pid).
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .stderr(Stdio::null())
        .status();
    let _ = child.wait();
    let [stdout, stderr] = readers.map(|r| r.join().unwrap_or_default());
    match status {
        Some(status) if status.success() => Ok(()),
        status => Err(format!(
            "{}: {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
            relative(page),
            match status {
                Some(status) => format!("the examples exited with {status}"),
                None => format!("the examples ran past {PAGE_TIMEOUT:?}"),
            }
        )),
    }
}

fn drain(pipe: Option<&mut impl Read>) -> String {
    let mut text = String::new();
    if let Some(pipe) = pipe {
        let _ = pipe.read_to_string(&mut text);
    }
    text
}

#[test]
fn every_runnable_example_in_the_docs_runs() {
    let mut failures = Vec::new();
    let mut ran = 0;
    for page in pages() {
        let markdown = std::fs::read_to_string(&page).expect("read the page");
        let all = blocks(&markdown);
        let to_run: Vec<(&Block, Language, Option<String>)> = all
            .iter()
            .filter_map(|b| runnable(&b.info).map(|(language, expect)| (b, language, expect)))
            .collect();
        if to_run.is_empty() {
            continue;
        }
        ran += to_run.len();
        let python = to_run
            .iter()
            .any(|(_, language, _)| *language == Language::Python);
        if let Err(failure) = run_page(&page, &script(&page, &to_run), python) {
            failures.push(failure);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(ran >= 17, "only {ran} runnable examples found");
}

/// What a client that reads `mcpServers` (Claude Desktop, Cursor, Claude
/// Code) accepts for one server: a command with string args and env, or a
/// URL with string headers.
fn check_mcp_servers(what: &str, config: &Value) -> Result<(), String> {
    let servers = config["mcpServers"]
        .as_object()
        .ok_or_else(|| format!("{what}: no top-level \"mcpServers\" object"))?;
    let only = config.as_object().map(|o| o.len()) == Some(1);
    if !only {
        return Err(format!(
            "{what}: keys beside \"mcpServers\" are not a client's"
        ));
    }
    for (name, server) in servers {
        let server = server
            .as_object()
            .ok_or_else(|| format!("{what}: server {name} is not an object"))?;
        let allowed: &[&str] = if server.contains_key("url") {
            &["url", "headers", "type"]
        } else {
            &["command", "args", "env", "type"]
        };
        if let Some(extra) = server.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(format!(
                "{what}: server {name} has \"{extra}\", which clients do not read"
            ));
        }
        check_server_fields(what, name, server)?;
    }
    Ok(())
}

/// VS Code's `.vscode/mcp.json`: `servers`, each with a `type`.
fn check_vscode_servers(what: &str, config: &Value) -> Result<(), String> {
    let servers = config["servers"]
        .as_object()
        .ok_or_else(|| format!("{what}: no top-level \"servers\" object"))?;
    for (name, server) in servers {
        let server = server
            .as_object()
            .ok_or_else(|| format!("{what}: server {name} is not an object"))?;
        let allowed: &[&str] = match server["type"].as_str() {
            Some("stdio") => &["type", "command", "args", "env", "envFile"],
            Some("http") | Some("sse") => &["type", "url", "headers"],
            other => return Err(format!("{what}: server {name} has type {other:?}")),
        };
        if let Some(extra) = server.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(format!(
                "{what}: server {name} has \"{extra}\", which VS Code does not read"
            ));
        }
        check_server_fields(what, name, server)?;
    }
    Ok(())
}

fn check_server_fields(
    what: &str,
    name: &str,
    server: &serde_json::Map<String, Value>,
) -> Result<(), String> {
    let strings = |key: &str| match server.get(key) {
        None => true,
        Some(Value::Array(items)) => items.iter().all(Value::is_string),
        Some(Value::Object(map)) => map.values().all(Value::is_string),
        Some(other) => other.is_string(),
    };
    if !["command", "args", "env", "url", "headers"]
        .iter()
        .all(|k| strings(k))
    {
        return Err(format!(
            "{what}: server {name} has a value that is not a string"
        ));
    }
    match (server.get("command"), server.get("url")) {
        (Some(_), None) | (None, Some(_)) => Ok(()),
        _ => Err(format!(
            "{what}: server {name} needs one of \"command\" and \"url\""
        )),
    }
}

#[test]
fn client_configurations_have_the_shape_clients_load() {
    let root = repo().join("mcp.json");
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(&root).expect("read mcp.json"))
            .expect("mcp.json is JSON");
    let mut failures: Vec<String> = check_mcp_servers("mcp.json", &config)
        .err()
        .into_iter()
        .collect();
    let mut checked = 0;
    for page in pages() {
        let markdown = std::fs::read_to_string(&page).expect("read the page");
        for block in blocks(&markdown) {
            let check = match block.info.as_str() {
                "json mcp-servers" => check_mcp_servers,
                "json vscode-servers" => check_vscode_servers,
                _ => continue,
            };
            checked += 1;
            let what = format!("{}:{}", relative(&page), block.line);
            let result = serde_json::from_str::<Value>(&block.text)
                .map_err(|e| format!("{what}: not JSON: {e}"))
                .and_then(|config| check(&what, &config));
            failures.extend(result.err());
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(checked >= 3, "only {checked} client configurations found");
}

#[test]
fn generated_parts_are_what_the_code_says_now() {
    let bless = std::env::var_os("ENGRAM_BLESS_DOCS").is_some();
    let mut stale = Vec::new();
    let mut found = BTreeSet::new();
    for page in pages() {
        let markdown = std::fs::read_to_string(&page).expect("read the page");
        let mut rewritten = markdown.clone();
        for part in engram::reference::Part::ALL {
            let start = format!("<!-- generated: engram reference {} -->\n", part.name());
            let Some(from) = markdown.find(&start) else {
                continue;
            };
            found.insert(part.name());
            let body = from + start.len();
            let end = markdown[body..]
                .find("<!-- end generated -->")
                .map(|e| body + e)
                .unwrap_or_else(|| panic!("{}: {start} is never closed", relative(&page)));
            let now = format!("\n{}\n", part.render().trim_end());
            if markdown[body..end] != now {
                stale.push(format!("{} ({})", relative(&page), part.name()));
                rewritten = rewritten.replacen(&markdown[from..end], &format!("{start}{now}"), 1);
            }
        }
        if bless && rewritten != markdown {
            std::fs::write(&page, rewritten).expect("rewrite the page");
        }
    }
    assert_eq!(
        found,
        BTreeSet::from(["config", "rest", "tools"]),
        "every generated part appears in the docs"
    );
    assert!(
        bless || stale.is_empty(),
        "stale generated parts: {stale:?}; run `ENGRAM_BLESS_DOCS=1 cargo nextest run docs::` \
         and review the diff"
    );
}

/// GitHub's anchor for a heading: lower-cased, punctuation but `-` and `_`
/// dropped, spaces as `-`; a repeated one gets `-1`, `-2`, ...
fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut in_fence = false;
    for line in markdown.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence || !line.starts_with('#') {
            continue;
        }
        let title = line.trim_start_matches('#').trim();
        let slug: String = title
            .chars()
            .filter_map(|c| match c {
                c if c.is_alphanumeric() => Some(c.to_lowercase().next().unwrap_or(c)),
                '-' | '_' => Some(c),
                ' ' => Some('-'),
                _ => None,
            })
            .collect();
        let mut anchor = slug.clone();
        let mut n = 0;
        while seen.contains(&anchor) {
            n += 1;
            anchor = format!("{slug}-{n}");
        }
        seen.insert(anchor);
    }
    seen
}

#[test]
fn every_relative_link_and_anchor_resolves() {
    let link = regex::Regex::new(r"\]\(([^)\s]+)\)").expect("the link pattern");
    let mut broken = Vec::new();
    for page in pages() {
        let markdown = std::fs::read_to_string(&page).expect("read the page");
        let mut prose = String::new();
        let mut in_fence = false;
        for line in markdown.lines() {
            let trimmed = line.trim_start();
            if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
                in_fence = !in_fence;
            } else if !in_fence {
                prose.push_str(line);
                prose.push('\n');
            }
        }
        for target in link.captures_iter(&prose).map(|c| c[1].to_owned()) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (file, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let file_path = if file.is_empty() {
                page.clone()
            } else {
                page.parent().expect("a page's dir").join(file)
            };
            if !file_path.exists() {
                broken.push(format!("{}: {target}: no such file", relative(&page)));
                continue;
            }
            if anchor.is_empty() || file_path.extension().is_none_or(|e| e != "md") {
                continue;
            }
            let text = std::fs::read_to_string(&file_path).expect("read the linked page");
            if !anchors(&text).contains(anchor) {
                broken.push(format!("{}: {target}: no such heading", relative(&page)));
            }
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[test]
fn the_docs_reader_finds_blocks_and_anchors_as_github_does() {
    let page = "# Quick start\n\n```sh runnable\necho hi\n```\n\n## Cache (Dragonfly or Redis)\n\
                ```json mcp-servers\n{}\n```\n## Quick start\n";
    let found = blocks(page);
    assert_eq!(found.len(), 2);
    assert_eq!((found[0].line, found[0].info.as_str()), (3, "sh runnable"));
    assert_eq!(found[0].text, "echo hi\n");
    let anchors = anchors(page);
    for expected in ["quick-start", "cache-dragonfly-or-redis", "quick-start-1"] {
        assert!(anchors.contains(expected), "{expected} in {anchors:?}");
    }
}

/// Every error code engram answers with (in `src/`: a problem built with a
/// status and a code, or `Error::code`) has a row in the troubleshooting
/// table of docs/operations.md.
#[test]
fn troubleshooting_covers_every_error_code() {
    let built = regex::Regex::new(r#"StatusCode::[A-Z_]+,\s*"([a-z_]+)""#).expect("pattern");
    let named = regex::Regex::new(r#"=> "([a-z_]+)",?\s*$"#).expect("pattern");
    let mut codes = BTreeSet::new();
    let mut files = vec![repo().join("src/error.rs")];
    for dir in ["src/http", "src"] {
        for entry in std::fs::read_dir(repo().join(dir)).expect("read src") {
            let path = entry.expect("an entry").path();
            if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read a source file");
        codes.extend(built.captures_iter(&text).map(|c| c[1].to_owned()));
        if file.ends_with("error.rs") {
            for line in text.lines() {
                codes.extend(named.captures(line).map(|c| c[1].to_owned()));
            }
        }
    }
    assert!(codes.len() >= 10, "found only {codes:?}");
    let page = std::fs::read_to_string(repo().join("docs/operations.md")).expect("read");
    let table = page
        .split("## Troubleshooting")
        .nth(1)
        .expect("a Troubleshooting section");
    let missing: Vec<&String> = codes
        .iter()
        .filter(|code| !table.contains(&format!("| `{code}` |")))
        .collect();
    assert!(
        missing.is_empty(),
        "error codes without a troubleshooting row: {missing:?}"
    );
}
