//! argon2id that reuses its memory. Every run needs about 19 MiB of blocks; allocating them
//! per run made the allocator keep a fresh 19 MiB for nearly every run (a login flood grew
//! the router by about 20 MiB per accepted check). Here each thread keeps one buffer and
//! runs in it, so argon2 holds at most one buffer per thread that runs it (the
//! [`crate::app::auth::PasswordLimiter`] threads).

use std::cell::RefCell;

use argon2::password_hash::{
    Decimal, Ident, Output, ParamsString, PasswordHash, PasswordHasher, Salt,
};
use argon2::{Algorithm, Argon2, Block, Params, Version};

thread_local! {
    static MEMORY: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

/// argon2 (argon2id with the default parameters for new hashes; what a PHC string names,
/// for verification) in this thread's reused memory. `PasswordVerifier` comes with it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Argon2Reusing;

impl PasswordHasher for Argon2Reusing {
    type Params = Params;

    fn hash_password<'a>(
        &self,
        password: &[u8],
        salt: impl Into<Salt<'a>>,
    ) -> argon2::password_hash::Result<PasswordHash<'a>> {
        self.hash_password_customized(password, None, None, Params::default(), salt)
    }

    fn hash_password_customized<'a>(
        &self,
        password: &[u8],
        algorithm: Option<Ident<'a>>,
        version: Option<Decimal>,
        params: Params,
        salt: impl Into<Salt<'a>>,
    ) -> argon2::password_hash::Result<PasswordHash<'a>> {
        let algorithm = algorithm
            .map(Algorithm::try_from)
            .transpose()?
            .unwrap_or_default();
        let version = version
            .map(Version::try_from)
            .transpose()?
            .unwrap_or_default();
        let salt = salt.into();
        let mut salt_buf = [0u8; 64];
        let salt_bytes = salt.decode_b64(&mut salt_buf)?;
        let output_len = params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN);
        let context = Argon2::new(algorithm, version, params.clone());
        let blocks = params.block_count();
        let output = Output::init_with(output_len, |out| {
            MEMORY.with(|memory| {
                let mut memory = memory.borrow_mut();
                if memory.len() < blocks {
                    memory.resize(blocks, Block::default());
                }
                // Every block is written in the first pass before it is read: no need to
                // clear what the last run left.
                context
                    .hash_password_into_with_memory(
                        password,
                        salt_bytes,
                        out,
                        &mut memory[..blocks],
                    )
                    .map_err(Into::into)
            })
        })?;
        Ok(PasswordHash {
            algorithm: algorithm.ident(),
            version: Some(version.into()),
            params: ParamsString::try_from(&params)?,
            salt: Some(salt),
            hash: Some(output),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::{PasswordVerifier, SaltString, rand_core::OsRng};

    #[test]
    fn agrees_with_the_allocating_argon2_both_ways() {
        let salt = SaltString::generate(&mut OsRng);
        let ours = Argon2Reusing
            .hash_password(b"hunter42", &salt)
            .unwrap()
            .to_string();
        let theirs = Argon2::default()
            .hash_password(b"hunter42", &salt)
            .unwrap()
            .to_string();
        assert_eq!(ours, theirs);
        let parsed = PasswordHash::new(&theirs).unwrap();
        assert!(Argon2Reusing.verify_password(b"hunter42", &parsed).is_ok());
        assert!(Argon2Reusing.verify_password(b"hunter43", &parsed).is_err());
        // Memory left by a run with other parameters does not change a result.
        let small = Params::new(1024, 1, 1, None).unwrap();
        let other = Argon2Reusing
            .hash_password_customized(b"x", None, None, small, &salt)
            .unwrap()
            .to_string();
        assert!(
            Argon2Reusing
                .verify_password(b"x", &PasswordHash::new(&other).unwrap())
                .is_ok()
        );
        assert!(Argon2Reusing.verify_password(b"hunter42", &parsed).is_ok());
    }
}
