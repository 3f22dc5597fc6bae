//! [`S3Server`]: an S3-compatible server for the backup tests — moto's server mode
//! (`moto_server`, installed into the repository's `.venv` by `scripts/test` from
//! `e2e/requirements.txt`) — run as a process on a reserved port of loopback or of another
//! address of the test's machine (the pod network's, for pods to reach it), and a boto3 client
//! to look into it independently of the operator's own S3 client.
//!
//! moto keeps everything in memory: a restarted server has no buckets until they are made again.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Deserialize;
use serde_json::Value;

use crate::kube_env::repo_root;
use crate::ports::ReservedPort;

/// The access key the tests give the operator; moto without authentication takes any.
pub const ACCESS_KEY_ID: &str = "ferrokv-e2e";
pub const SECRET_ACCESS_KEY: &str = "ferrokv-e2e-secret";

/// boto3 operations the tests need, each printing JSON.
const CLIENT_SCRIPT: &str = r#"
import hashlib, json, sys
import boto3
endpoint, op, *args = sys.argv[1:]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  aws_access_key_id="ferrokv-e2e", aws_secret_access_key="ferrokv-e2e-secret")
if op == "create-bucket":
    s3.create_bucket(Bucket=args[0])
    print("{}")
elif op == "list":
    bucket, prefix = args
    objects = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            objects.append({"key": item["Key"], "size": len(body),
                            "sha256": hashlib.sha256(body).hexdigest()})
    print(json.dumps(objects))
elif op == "get-json":
    bucket, key = args
    print(s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode())
elif op == "get-file":
    bucket, key, path = args
    with open(path, "wb") as out:
        out.write(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    print("{}")
elif op == "put-file":
    bucket, key, path = args
    with open(path, "rb") as data:
        s3.put_object(Bucket=bucket, Key=key, Body=data.read())
    print("{}")
else:
    raise SystemExit(f"unknown operation {op}")
"#;

/// A Secret `name` of `namespace` with the tests' credentials, under the keys the operator
/// documents (`accessKeyID`, `secretAccessKey`).
pub fn credentials_secret(name: &str, namespace: &str) -> Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "data": {
            "accessKeyID": base64(ACCESS_KEY_ID.as_bytes()),
            "secretAccessKey": base64(SECRET_ACCESS_KEY.as_bytes()),
        },
    })
}

/// Standard base64 with padding, as a Secret's `data` holds values.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// One object in a bucket.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct StoredObject {
    pub key: String,
    pub size: u64,
    pub sha256: String,
}

/// A running moto server; killed when dropped.
pub struct S3Server {
    child: Option<Child>,
    /// The address it listens on.
    host: IpAddr,
    port: ReservedPort,
    /// Whether requests must carry credentials moto knows (it knows none, so every request
    /// after the first `free_requests` is refused as `InvalidAccessKeyId`).
    free_requests: Option<u32>,
    log_path: PathBuf,
}

fn venv_program(name: &str) -> anyhow::Result<PathBuf> {
    let path = repo_root().join(".venv/bin").join(name);
    if !path.exists() {
        bail!(
            "{} is missing: run scripts/test once, or `python3 -m venv .venv && \
             .venv/bin/pip install -r e2e/requirements.txt`",
            path.display()
        );
    }
    Ok(path)
}

impl S3Server {
    /// Starts moto with every request allowed, logging to `dir/moto.log`.
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        Self::start_inner(dir, Ipv4Addr::LOCALHOST.into(), None)
    }

    /// Starts moto with every request allowed on `host` (an address of this machine), e.g.
    /// the pod network's, which the hermetic cluster's pods reach.
    pub fn start_on(dir: &Path, host: IpAddr) -> anyhow::Result<Self> {
        Self::start_inner(dir, host, None)
    }

    /// Starts moto checking credentials after the first `free_requests` requests (for the
    /// tests' own setup, e.g. making a bucket): every later request is refused.
    pub fn start_refusing_credentials(dir: &Path, free_requests: u32) -> anyhow::Result<Self> {
        Self::start_inner(dir, Ipv4Addr::LOCALHOST.into(), Some(free_requests))
    }

    fn start_inner(dir: &Path, host: IpAddr, free_requests: Option<u32>) -> anyhow::Result<Self> {
        let port = ReservedPort::reserve()?;
        let log_path = dir.join(format!("moto-{}.log", port.port()));
        let mut server = Self {
            child: None,
            host,
            port,
            free_requests,
            log_path,
        };
        server.spawn()?;
        Ok(server)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("creating {}", self.log_path.display()))?;
        let mut command = Command::new(venv_program("moto_server")?);
        command
            .args([
                "-H",
                &self.host.to_string(),
                "-p",
                &self.port.port().to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(free) = self.free_requests {
            command.env("INITIAL_NO_AUTH_ACTION_COUNT", free.to_string());
        }
        // SAFETY: prctl in the child between fork and exec, touching no shared state.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        self.child = Some(command.spawn().context("spawning moto_server")?);
        // A TCP connection, not a request: in credential-checking mode requests are counted.
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect((self.host, self.port.port())).is_err() {
            if Instant::now() > deadline {
                bail!("moto_server did not listen within 60s: {}", self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// `http://HOST:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}:{}", self.host, self.port.port())
    }

    /// Kills the server, as an outage would.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.spawn()
    }

    async fn client(&self, args: &[&str]) -> anyhow::Result<String> {
        let python = venv_program("python")?;
        let output = tokio::process::Command::new(python)
            .arg("-c")
            .arg(CLIENT_SCRIPT)
            .arg(self.endpoint())
            .args(args)
            .kill_on_drop(true)
            .output()
            .await
            .context("running boto3")?;
        if !output.status.success() {
            bail!(
                "boto3 {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    pub async fn create_bucket(&self, bucket: &str) -> anyhow::Result<()> {
        self.client(&["create-bucket", bucket]).await.map(drop)
    }

    /// The objects under `prefix`, with their sizes and SHA-256.
    pub async fn objects(&self, bucket: &str, prefix: &str) -> anyhow::Result<Vec<StoredObject>> {
        let text = self.client(&["list", bucket, prefix]).await?;
        Ok(serde_json::from_str(&text)?)
    }

    /// A JSON object's content.
    pub async fn get_json(&self, bucket: &str, key: &str) -> anyhow::Result<Value> {
        let text = self.client(&["get-json", bucket, key]).await?;
        Ok(serde_json::from_str(&text)?)
    }

    /// Downloads an object into `file`.
    pub async fn get_file(&self, bucket: &str, key: &str, file: &Path) -> anyhow::Result<()> {
        let path = file.to_str().context("a UTF-8 path")?;
        self.client(&["get-file", bucket, key, path])
            .await
            .map(drop)
    }

    /// Uploads `file` as an object.
    pub async fn put_file(&self, bucket: &str, key: &str, file: &Path) -> anyhow::Result<()> {
        let path = file.to_str().context("a UTF-8 path")?;
        self.client(&["put-file", bucket, key, path])
            .await
            .map(drop)
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "--- moto_server log ({}) ---\n{}",
                self.log_path.display(),
                self.log_tail()
            );
        }
    }
}
