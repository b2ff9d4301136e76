//! The users file: `name:<argon2 PHC hash>` lines that enable AUTH.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

/// A users file that could not be read; the message names the field and line.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("ingress.usersFile {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("ingress.usersFile {path} line {line}: {message}")]
    Line {
        path: String,
        line: usize,
        message: String,
    },
}

/// Users and their password hashes.
#[derive(Debug, Clone)]
pub struct Users {
    hashes: Arc<HashMap<String, String>>,
    /// Verified against when the user is unknown, so both cases take the same time.
    decoy: Arc<String>,
}

impl Users {
    /// Reads and checks a users file.
    pub fn load(path: &Path) -> Result<Users, UsersError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| UsersError::Read {
            path: shown.clone(),
            source,
        })?;
        Users::parse(&text).map_err(|(line, message)| UsersError::Line {
            path: shown,
            line,
            message,
        })
    }

    /// Parses the file's text; errors carry the 1-based line number.
    pub fn parse(text: &str) -> Result<Users, (usize, String)> {
        let mut hashes = HashMap::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let number = index + 1;
            let (name, hash) = line
                .split_once(':')
                .ok_or((number, "expected name:<argon2 hash>".to_string()))?;
            if name.is_empty() {
                return Err((number, "empty user name".into()));
            }
            PasswordHash::new(hash)
                .map_err(|e| (number, format!("not a PHC password hash: {e}")))?;
            if !hash.starts_with("$argon2") {
                return Err((number, "only argon2 hashes are supported".into()));
            }
            if hashes.insert(name.to_string(), hash.to_string()).is_some() {
                return Err((number, format!("user {name} is listed twice")));
            }
        }
        let decoy = hash_password("decoy password").map_err(|e| (0, e))?;
        Ok(Users {
            hashes: Arc::new(hashes),
            decoy: Arc::new(decoy),
        })
    }

    /// Checks a password; runs argon2 on a blocking thread.
    pub async fn verify(&self, user: String, password: String) -> bool {
        let (known, hash) = match self.hashes.get(&user) {
            Some(hash) => (true, hash.clone()),
            None => (false, self.decoy.as_ref().clone()),
        };
        let verified = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash).is_ok_and(|h| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
        })
        .await
        .unwrap_or(false);
        known && verified
    }
}

/// An argon2id PHC hash of `password` with a random salt, for the users file.
pub fn hash_password(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    getrandom(&mut salt)?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

fn getrandom(buf: &mut [u8]) -> Result<(), String> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .map_err(|e| format!("reading /dev/urandom: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn verifies_known_users_only() {
        let hash = hash_password("s3cret").unwrap();
        let users = Users::parse(&format!("# comment\n\nalice:{hash}\n")).unwrap();
        assert!(users.verify("alice".into(), "s3cret".into()).await);
        assert!(!users.verify("alice".into(), "wrong".into()).await);
        assert!(!users.verify("bob".into(), "s3cret".into()).await);
    }

    #[test]
    fn names_the_bad_line() {
        assert_eq!(Users::parse("alice\n").unwrap_err().0, 1);
        assert_eq!(Users::parse("\nbob:plaintext\n").unwrap_err().0, 2);
        let hash = hash_password("x").unwrap();
        assert!(
            Users::parse(&format!("a:{hash}\na:{hash}\n"))
                .unwrap_err()
                .1
                .contains("twice")
        );
    }
}
