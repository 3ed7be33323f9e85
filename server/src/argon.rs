//! argon2id that reuses its memory. Every run needs about 19 MiB of blocks; allocating them
//! per run made the allocator keep a fresh 19 MiB for nearly every run (a login flood grew
//! the router by about 20 MiB per accepted check). Here each thread keeps one buffer and
//! runs in it, so argon2 holds at most one buffer per thread that runs it (the
//! [`crate::app::auth::PasswordLimiter`] threads).

use std::cell::RefCell;

use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
use argon2::password_hash::{self, CustomizedPasswordHasher, PasswordHasher};
use argon2::{Algorithm, Argon2, Block, Params, Version};

thread_local! {
    static MEMORY: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

/// argon2 (argon2id with the default parameters for new hashes; what a PHC string names,
/// for verification) in this thread's reused memory. `PasswordVerifier<PasswordHash>` comes
/// with [`CustomizedPasswordHasher`]; `hash_password` (from [`PasswordHasher`]) draws its
/// salt from the OS CSPRNG (getrandom).
#[derive(Debug, Clone, Copy, Default)]
pub struct Argon2Reusing;

impl PasswordHasher<PasswordHash> for Argon2Reusing {
    fn hash_password_with_salt(
        &self,
        password: &[u8],
        salt: &[u8],
    ) -> password_hash::Result<PasswordHash> {
        self.hash_password_customized(password, salt, None, None, Params::default())
    }
}

impl CustomizedPasswordHasher<PasswordHash> for Argon2Reusing {
    type Params = Params;

    fn hash_password_customized(
        &self,
        password: &[u8],
        salt: &[u8],
        algorithm: Option<&str>,
        version: Option<u32>,
        params: Params,
    ) -> password_hash::Result<PasswordHash> {
        let algorithm = algorithm
            .map(Algorithm::try_from)
            .transpose()?
            .unwrap_or_default();
        let version = version
            .map(Version::try_from)
            .transpose()?
            .unwrap_or_default();
        let salt = Salt::new(salt)?;
        let output_len = params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN);
        let mut buffer = [0u8; Output::MAX_LENGTH];
        let out = buffer
            .get_mut(..output_len)
            .ok_or(password_hash::Error::OutputSize)?;
        let context = Argon2::new(algorithm, version, params.clone());
        let blocks = params.block_count();
        MEMORY.with(|memory| {
            let mut memory = memory.borrow_mut();
            if memory.len() < blocks {
                memory.resize(blocks, Block::default());
            }
            // Every block is written in the first pass before it is read: no need to
            // clear what the last run left.
            context.hash_password_into_with_memory(password, &salt, out, &mut memory[..blocks])
        })?;
        Ok(PasswordHash {
            algorithm: algorithm.ident(),
            version: Some(version.into()),
            params: ParamsString::try_from(&params)?,
            salt: Some(salt),
            hash: Some(Output::new(out)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::{PasswordVerifier, generate_salt};

    #[test]
    fn agrees_with_the_allocating_argon2_both_ways() {
        let salt = generate_salt();
        let ours = Argon2Reusing
            .hash_password_with_salt(b"hunter42", &salt)
            .unwrap()
            .to_string();
        let theirs = Argon2::default()
            .hash_password_with_salt(b"hunter42", &salt)
            .unwrap()
            .to_string();
        assert_eq!(ours, theirs);
        let parsed = PasswordHash::new(&theirs).unwrap();
        assert!(Argon2Reusing.verify_password(b"hunter42", &parsed).is_ok());
        assert!(Argon2Reusing.verify_password(b"hunter43", &parsed).is_err());
        // Memory left by a run with other parameters does not change a result.
        let small = Params::new(1024, 1, 1, None).unwrap();
        let other = Argon2Reusing
            .hash_password_with_params(b"x", &salt, small)
            .unwrap()
            .to_string();
        assert!(
            Argon2Reusing
                .verify_password(b"x", &PasswordHash::new(&other).unwrap())
                .is_ok()
        );
        assert!(Argon2Reusing.verify_password(b"hunter42", &parsed).is_ok());
    }

    #[test]
    fn new_hashes_are_argon2id_with_the_default_parameters_and_a_fresh_salt() {
        let one = Argon2Reusing.hash_password(b"hunter42").unwrap();
        let two = Argon2Reusing.hash_password(b"hunter42").unwrap();
        assert!(
            one.to_string()
                .starts_with("$argon2id$v=19$m=19456,t=2,p=1$")
        );
        assert_eq!(one.salt.unwrap().len(), 16);
        assert_ne!(one.salt, two.salt);
        assert_ne!(one.hash, two.hash);
    }

    /// PHC strings made by argon2 0.5 (this module with the default parameters, argon2 0.5's
    /// own hasher, and non-default algorithm, version, parameters and output length): stored
    /// hashes must keep verifying, and rehashing with their salt must give them back exactly.
    #[test]
    fn hashes_made_by_argon2_0_5_still_verify() {
        let stored: [(&[u8], &str); 4] = [
            (
                b"correct horse battery staple",
                "$argon2id$v=19$m=19456,t=2,p=1$jLFFbB9oi1FnhYpPn2aRoA$+AHrinYPR5KvcrR1NA3olUF3bmThgGWNh3nCreH9WVo",
            ),
            (
                b"correct horse battery staple",
                "$argon2id$v=19$m=19456,t=2,p=1$rHMUq2u6CIzdD1HR9kl/vQ$zApLYD6VyBaedIpe2tqAR4WMtS9KP6ReL1L9E3woCFk",
            ),
            (
                b"Tr0ub4dor&3",
                "$argon2i$v=16$m=1024,t=3,p=2$GdIJWltXrtN6EzSfw/0o0g$EgOhFXKA42E9lYqV55Lo7uF0000Cjc0P",
            ),
            (
                b"Tr0ub4dor&3",
                "$argon2d$v=19$m=2048,t=1,p=1$ym8UEJ8mfM9YkejEfN/AAg$3O0s9CyyiKY7nbwwtwH0yfDxD7Frn2DcG2bnMvSyh24",
            ),
        ];
        for (password, phc) in stored {
            let parsed = PasswordHash::new(phc).unwrap();
            assert_eq!(
                Argon2Reusing.verify_password(password, &parsed),
                Ok(()),
                "{phc}"
            );
            assert_eq!(
                Argon2Reusing.verify_password(b"wrong password", &parsed),
                Err(password_hash::Error::PasswordInvalid),
                "{phc}"
            );
            let rehashed = Argon2Reusing
                .hash_password_customized(
                    password,
                    &parsed.salt.unwrap(),
                    Some(parsed.algorithm.as_str()),
                    parsed.version,
                    Params::try_from(&parsed).unwrap(),
                )
                .unwrap();
            assert_eq!(rehashed.to_string(), phc);
        }
    }
}
