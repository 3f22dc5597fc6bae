//! Arming the node's failpoints at run time (failpoint builds only: the `failpoints` feature,
//! the `ferrokv-failpoints` binary; docs/robustness.md). The points themselves are
//! `fail::fail_point!` sites in the storage and Raft crates; this module owns the small HTTP
//! endpoint the robustness suite arms them through, as etcd's gofail does with `GOFAIL_HTTP`:
//!
//! - `PUT /<point>` with the actions as the body: `crash`, which SIGKILLs the member when the
//!   point is reached (an abrupt death, nothing flushed or closed), or any fail-rs action
//!   (`sleep(500)`, `return`, `1*return`, `off`, ...);
//! - `DELETE /<point>` disarms it; `GET /` lists the armed points, one `point=actions` a line.
//!
//! The endpoint listens on `$FERROKV_FAILPOINTS_HTTP`, by default [`DEFAULT_ADDRESS`] (every
//! member of the suite has its own network namespace), or nowhere if it is `off`. Points can
//! also be armed at start with fail-rs's own `FAILPOINTS=point=actions;...`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};

/// The environment variable naming the endpoint's address.
pub const ADDRESS_ENV: &str = "FERROKV_FAILPOINTS_HTTP";
/// Where the endpoint listens when [`ADDRESS_ENV`] is not set.
pub const DEFAULT_ADDRESS: &str = "0.0.0.0:2381";
/// The action that kills the member at the point.
pub const CRASH: &str = "crash";
/// Largest request body accepted: actions are a few words.
const MAX_BODY: usize = 4096;

/// Arms the points `FAILPOINTS` names and serves the endpoint on a thread of its own, so it
/// answers even while the member's runtime is stuck. Fails if the address cannot be bound.
pub fn start_from_env() -> Result<(), String> {
    // The scenario lives as long as the process: tearing it down would disarm every point.
    std::mem::forget(fail::FailScenario::setup());
    let address = std::env::var(ADDRESS_ENV).unwrap_or_else(|_| DEFAULT_ADDRESS.to_string());
    if address == "off" {
        return Ok(());
    }
    let listener = TcpListener::bind(&address)
        .map_err(|e| format!("{ADDRESS_ENV}: cannot listen on {address}: {e}"))?;
    std::thread::Builder::new()
        .name("failpoints-http".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Err(e) = serve(stream) {
                    eprintln!("failpoints: a request failed: {e}");
                }
            }
        })
        .map_err(|e| format!("starting the failpoint endpoint: {e}"))?;
    Ok(())
}

/// Arms `point` with `actions` (`crash` or a fail-rs action).
pub fn arm(point: &str, actions: &str) -> Result<(), String> {
    if actions == CRASH {
        let name = point.to_string();
        return fail::cfg_callback(point, move || crash(&name));
    }
    fail::cfg(point, actions)
}

/// Dies as SIGKILL kills: no destructor, no flush, no exit handler runs.
fn crash(point: &str) -> ! {
    eprintln!("failpoint {point} reached: crashing (SIGKILL)");
    // SAFETY: kill and getpid have no preconditions; SIGKILL cannot be caught.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    // SIGKILL to oneself is delivered before kill returns; never reached.
    std::process::abort()
}

/// Answers one request: `PUT /<point>`, `DELETE /<point>` or `GET /`.
fn serve(stream: TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut content_length = 0;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                content_length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; content_length.min(MAX_BODY)];
    reader.read_exact(&mut body)?;
    let body = String::from_utf8_lossy(&body).trim().to_string();
    let mut words = request_line.split_whitespace();
    let method = words.next().unwrap_or_default();
    let point = words.next().unwrap_or_default().trim_start_matches('/');
    let (status, answer) = match (method, point) {
        ("GET", "") => {
            let mut listed: Vec<String> = fail::list()
                .into_iter()
                .map(|(name, actions)| format!("{name}={actions}\n"))
                .collect();
            listed.sort();
            ("200 OK", listed.concat())
        }
        (_, "") => (
            "400 Bad Request",
            "name a failpoint: /<point>\n".to_string(),
        ),
        ("PUT", point) if body.is_empty() => (
            "400 Bad Request",
            format!("PUT /{point} needs the actions as its body (e.g. {CRASH})\n"),
        ),
        ("PUT", point) => match arm(point, &body) {
            Ok(()) => ("204 No Content", String::new()),
            Err(e) => ("400 Bad Request", format!("{point}={body}: {e}\n")),
        },
        ("DELETE", point) => {
            fail::remove(point);
            ("204 No Content", String::new())
        }
        (method, _) => (
            "405 Method Not Allowed",
            format!("{method}: use PUT, DELETE or GET\n"),
        ),
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
        answer.len()
    )?;
    stream.flush()
}
