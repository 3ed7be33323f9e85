//! The admin API token: shown once when made, stored only as an argon2id hash.

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use rand::TryRng;
use rand::rngs::SysRng;

use tenant_router::tenant::InvalidValue;

/// A fresh token (256 random bits, hex, prefixed `tra_` so it is recognisable in a secret
/// scanner) and its argon2id PHC hash, the only form that should be stored.
pub fn generate() -> (String, AdminTokenHash) {
    let mut bytes = [0u8; 32];
    SysRng
        .try_fill_bytes(&mut bytes)
        .expect("the OS random number generator failed");
    let token = format!(
        "tra_{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    // `hash_password` draws the salt from the OS CSPRNG (getrandom).
    let hash = Argon2::default()
        .hash_password(token.as_bytes())
        .expect("hashing a fresh token fails only if the OS random number generator does")
        .to_string();
    (token, AdminTokenHash(hash))
}

/// An argon2 PHC string, e.g. `$argon2id$v=19$m=19456,t=2,p=1$…`.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminTokenHash(String);

impl AdminTokenHash {
    /// Parses a PHC string; only argon2 hashes are accepted.
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        let parsed =
            PasswordHash::new(s).map_err(|_| InvalidValue("is not a PHC hash string".into()))?;
        if !parsed.algorithm.as_str().starts_with("argon2") {
            return Err(InvalidValue("must be an argon2 hash".into()));
        }
        Ok(Self(s.to_string()))
    }

    /// True when `token` hashes to this. argon2 compares the outputs in constant time. Slow
    /// by design (tens of milliseconds): call it off the async workers.
    pub fn verify(&self, token: &str) -> bool {
        PasswordHash::new(&self.0).is_ok_and(|h| {
            crate::argon::Argon2Reusing
                .verify_password(token.as_bytes(), &h)
                .is_ok()
        })
    }

    /// The PHC string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for AdminTokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminTokenHash(…)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_token_verifies_against_its_hash_only() {
        let (token, hash) = generate();
        assert!(token.starts_with("tra_") && token.len() == 68);
        let parsed = AdminTokenHash::parse(hash.as_str()).unwrap();
        assert!(parsed.verify(&token));
        assert!(!parsed.verify("tra_wrong"));
        assert!(!parsed.verify(""));
        let (other, _) = generate();
        assert!(!parsed.verify(&other));
    }

    /// A token and its hash as `generate` made them with argon2 0.5: configured hashes must
    /// keep working after the upgrade.
    #[test]
    fn a_token_hashed_by_argon2_0_5_still_verifies() {
        let token = "tra_b69d6886023a54f1e61e104a952940e57f37f8f78bb63a64df6f3f0f7c407a02";
        let hash = AdminTokenHash::parse(
            "$argon2id$v=19$m=19456,t=2,p=1$xGodIuBKIUJu265Adzu2EA$tCmqdI6smJIhh3DkS3StpatGDry3LIZg8d+jZO0TW2s",
        )
        .unwrap();
        assert!(hash.verify(token));
        assert!(!hash.verify(&token.replace("7a02", "7a03")));
    }

    #[test]
    fn only_argon2_phc_strings_parse() {
        assert!(AdminTokenHash::parse("plain-token").is_err());
        assert!(AdminTokenHash::parse("").is_err());
        assert!(AdminTokenHash::parse("$pbkdf2-sha256$i=1000$c2FsdA$aGFzaA").is_err());
    }
}
