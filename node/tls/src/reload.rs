//! Material built from files that is rebuilt when the files change: the member's certificate
//! and key, the trusted CA bundle, the CRL. This is how certificates rotate without a restart.
//!
//! A [`Watched`] value is asked for on every handshake; at most once per [`CHECK_INTERVAL`] it
//! looks at its files' metadata (modification time, size, inode — following symlinks, so a
//! Kubernetes Secret volume's atomic swap counts) and, when any changed, builds the value again.
//! Connections already established keep the material they were made with: nothing here touches
//! them. When the new files do not make a valid value (a half-written key, an expired
//! certificate, a key that does not match), the last good value stays in use and one error line
//! says why; the next change of the files is tried again.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use crate::TlsError;

/// How often a value's files are looked at, at most.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// What identifies one version of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

type Build<T> = Box<dyn Fn() -> Result<T, TlsError> + Send + Sync>;

/// A value built from files, rebuilt when they change.
pub struct Watched<T> {
    /// What the value is, for the log: "client certificate (--cert-file, --key-file)".
    what: String,
    files: Vec<PathBuf>,
    build: Build<T>,
    state: Mutex<State<T>>,
}

struct State<T> {
    current: T,
    stamps: Vec<Option<Stamp>>,
    checked: Instant,
}

impl<T: Clone> Watched<T> {
    /// Builds the first value; an error here is the member's refusal to start.
    pub fn new(
        what: String,
        files: Vec<PathBuf>,
        build: impl Fn() -> Result<T, TlsError> + Send + Sync + 'static,
    ) -> Result<Watched<T>, TlsError> {
        // The stamps are taken before reading, so a write racing the first build is seen as a
        // change at the next check.
        let stamps = stamps(&files);
        let current = build()?;
        Ok(Watched {
            what,
            files,
            build: Box::new(build),
            state: Mutex::new(State {
                current,
                stamps,
                checked: Instant::now(),
            }),
        })
    }

    /// The value, rebuilt first if the files changed since the last look.
    pub fn get(&self) -> T {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.checked.elapsed() >= CHECK_INTERVAL {
            state.checked = Instant::now();
            let now = stamps(&self.files);
            if now != state.stamps {
                state.stamps = now;
                match (self.build)() {
                    Ok(value) => {
                        state.current = value;
                        tracing::info!("reloaded the {} from changed files", self.what);
                    }
                    Err(e) => tracing::error!(
                        "the {} changed on disk but cannot be used, keeping the previous one: {e}",
                        self.what
                    ),
                }
            }
        }
        state.current.clone()
    }
}

fn stamps(files: &[PathBuf]) -> Vec<Option<Stamp>> {
    files
        .iter()
        .map(|path| {
            std::fs::metadata(path).ok().map(|m| Stamp {
                modified: m.modified().ok(),
                len: m.len(),
                inode: m.ino(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn a_change_is_picked_up_and_a_broken_one_keeps_the_last_good_value() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("value");
        std::fs::write(&file, "1").unwrap();
        let builds = Arc::new(AtomicUsize::new(0));
        let path = file.clone();
        let counted = builds.clone();
        let watched = Watched::new("test value".into(), vec![file.clone()], move || {
            counted.fetch_add(1, Ordering::SeqCst);
            let text = std::fs::read_to_string(&path).unwrap();
            text.trim()
                .parse::<u32>()
                .map_err(|e| TlsError::Missing(e.to_string()))
        })
        .unwrap();
        assert_eq!(watched.get(), 1);

        std::fs::write(&file, "22").unwrap();
        // Not looked at again within the interval.
        assert_eq!(watched.get(), 1);
        std::thread::sleep(CHECK_INTERVAL + Duration::from_millis(50));
        assert_eq!(watched.get(), 22);

        std::fs::write(&file, "broken").unwrap();
        std::thread::sleep(CHECK_INTERVAL + Duration::from_millis(50));
        assert_eq!(watched.get(), 22);
        let after_broken = builds.load(Ordering::SeqCst);
        // An unchanged broken file is not rebuilt on every look.
        std::thread::sleep(CHECK_INTERVAL + Duration::from_millis(50));
        assert_eq!(watched.get(), 22);
        assert_eq!(builds.load(Ordering::SeqCst), after_broken);

        std::fs::write(&file, "333").unwrap();
        std::thread::sleep(CHECK_INTERVAL + Duration::from_millis(50));
        assert_eq!(watched.get(), 333);
    }
}
