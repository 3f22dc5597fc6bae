//! etcd's simple tokens: opaque strings naming a user, valid on every member because the
//! Authenticate that issues one is applied everywhere, kept in memory only (a restart ends them,
//! as in etcd), and expiring after `--auth-token-ttl` without use.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone)]
pub struct SimpleTokens {
    ttl: Duration,
    tokens: Arc<Mutex<HashMap<String, Issued>>>,
}

struct Issued {
    user: String,
    expires: Instant,
}

impl SimpleTokens {
    pub fn new(ttl: Duration) -> SimpleTokens {
        SimpleTokens {
            ttl,
            tokens: Default::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Issued>> {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a token issued to `user`.
    pub fn assign(&self, token: &str, user: &str) {
        let now = Instant::now();
        let mut tokens = self.lock();
        tokens.retain(|_, issued| issued.expires > now);
        tokens.insert(
            token.to_string(),
            Issued {
                user: user.to_string(),
                expires: now + self.ttl,
            },
        );
    }

    /// The user a live token names; using a token extends its life by the TTL.
    pub fn user_of(&self, token: &str) -> Option<String> {
        let now = Instant::now();
        let mut tokens = self.lock();
        match tokens.get_mut(token) {
            Some(issued) if issued.expires > now => {
                issued.expires = now + self.ttl;
                Some(issued.user.clone())
            }
            Some(_) => {
                tokens.remove(token);
                None
            }
            None => None,
        }
    }

    /// Ends every token of `user` (deleted, or its password changed).
    pub fn invalidate_user(&self, user: &str) {
        self.lock().retain(|_, issued| issued.user != user);
    }

    /// Ends every token (auth disabled).
    pub fn clear(&self) {
        self.lock().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_names_its_user_until_invalidated() {
        let tokens = SimpleTokens::new(Duration::from_secs(60));
        tokens.assign("t1", "alice");
        tokens.assign("t2", "bob");
        assert_eq!(tokens.user_of("t1").as_deref(), Some("alice"));
        tokens.invalidate_user("alice");
        assert_eq!(tokens.user_of("t1"), None);
        assert_eq!(tokens.user_of("t2").as_deref(), Some("bob"));
    }

    #[test]
    fn an_unused_token_expires_after_the_ttl() {
        let tokens = SimpleTokens::new(Duration::from_millis(20));
        tokens.assign("t", "alice");
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(tokens.user_of("t"), None);
    }
}
