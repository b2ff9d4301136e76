//! The users file: `name:<argon2 PHC hash>` lines that enable AUTH.
//!
//! Hashes are parsed once, at load. A check then runs argon2 into memory the caller owns and
//! reuses (see `ingress::auth`), so password checks never allocate their tens of megabytes
//! anew.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};

/// The most memory one hash may make a check use, in KiB (RFC 9106's 64 MiB profile).
pub const MAX_MEMORY_KIB: u32 = 64 * 1024;

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

/// One parsed argon2 hash.
#[derive(Debug)]
pub struct Verifier {
    algorithm: Algorithm,
    version: Version,
    params: Params,
    salt: Vec<u8>,
    hash: Vec<u8>,
}

impl Verifier {
    /// Parses a PHC string such as `$argon2id$v=19$m=19456,t=2,p=1$...$...`.
    pub fn parse(phc: &str) -> Result<Verifier, String> {
        let hash = PasswordHash::new(phc).map_err(|e| format!("not a PHC password hash: {e}"))?;
        let algorithm =
            Algorithm::try_from(hash.algorithm).map_err(|_| "only argon2 hashes are supported")?;
        let version = hash
            .version
            .map(Version::try_from)
            .transpose()
            .map_err(|e| format!("argon2 version: {e}"))?
            .unwrap_or_default();
        let params = Params::try_from(&hash).map_err(|e| format!("argon2 parameters: {e}"))?;
        if params.m_cost() > MAX_MEMORY_KIB {
            return Err(format!(
                "argon2 memory cost m={} KiB is above the {MAX_MEMORY_KIB} KiB Postern allows",
                params.m_cost()
            ));
        }
        let mut salt = [0u8; 64];
        let salt = hash
            .salt
            .ok_or("the hash has no salt")?
            .decode_b64(&mut salt)
            .map_err(|e| format!("salt: {e}"))?
            .to_vec();
        let hash = hash
            .hash
            .ok_or("the hash has no output")?
            .as_bytes()
            .to_vec();
        Ok(Verifier {
            algorithm,
            version,
            params,
            salt,
            hash,
        })
    }

    /// Blocks of argon2 memory a check needs.
    pub fn blocks(&self) -> usize {
        self.params.block_count()
    }

    /// Checks `password`, using `memory` (grown to [`Verifier::blocks`] if smaller) for argon2.
    pub fn verify(&self, password: &[u8], memory: &mut Vec<Block>) -> bool {
        if memory.len() < self.blocks() {
            memory.resize(self.blocks(), Block::new());
        }
        let argon2 = Argon2::new(self.algorithm, self.version, self.params.clone());
        let mut out = vec![0u8; self.hash.len()];
        argon2
            .hash_password_into_with_memory(password, &self.salt, &mut out, &mut memory[..])
            .is_ok()
            && constant_time_eq(&out, &self.hash)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Users and their password hashes.
#[derive(Debug, Clone)]
pub struct Users {
    verifiers: Arc<HashMap<String, Arc<Verifier>>>,
    /// Checked against when the user is unknown, so both cases take the same time.
    decoy: Arc<Verifier>,
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
        let mut verifiers = HashMap::new();
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
            let verifier = Verifier::parse(hash).map_err(|e| (number, e))?;
            if verifiers
                .insert(name.to_string(), Arc::new(verifier))
                .is_some()
            {
                return Err((number, format!("user {name} is listed twice")));
            }
        }
        let decoy = hash_password("decoy password")
            .and_then(|hash| Verifier::parse(&hash))
            .map_err(|e| (0, e))?;
        Ok(Users {
            verifiers: Arc::new(verifiers),
            decoy: Arc::new(decoy),
        })
    }

    /// The hash to check `user`'s password against, and whether the user exists (an unknown
    /// user is checked against a decoy, so both take the same time).
    pub fn verifier(&self, user: &str) -> (bool, Arc<Verifier>) {
        match self.verifiers.get(user) {
            Some(verifier) => (true, verifier.clone()),
            None => (false, self.decoy.clone()),
        }
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

    #[test]
    fn verifies_known_users_only_reusing_memory() {
        let hash = hash_password("s3cret").unwrap();
        let users = Users::parse(&format!("# comment\n\nalice:{hash}\n")).unwrap();
        let mut memory = Vec::new();
        let check = |user: &str, password: &str, memory: &mut Vec<Block>| {
            let (known, verifier) = users.verifier(user);
            known && verifier.verify(password.as_bytes(), memory)
        };
        assert!(check("alice", "s3cret", &mut memory));
        let capacity = memory.capacity();
        assert_eq!(memory.len(), users.verifier("alice").1.blocks());
        assert!(!check("alice", "wrong", &mut memory));
        assert!(!check("bob", "s3cret", &mut memory));
        assert_eq!(memory.capacity(), capacity, "no new allocation");
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
        let greedy = "$argon2id$v=19$m=262144,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$4YN6c4Wu0i8tYa4u0h6QWVYSKLi5Re1AoE1Y2MBqVXo";
        let (line, message) = Users::parse(&format!("a:{greedy}\n")).unwrap_err();
        assert_eq!(line, 1);
        assert!(message.contains("memory cost"), "{message}");
    }
}
