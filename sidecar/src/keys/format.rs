//! What a key looks like: `attach_<id>_<secret>`, base62, with a fixed
//! prefix and lengths, so secret scanners find leaked keys by pattern
//! (`attach_[0-9A-Za-z]{12}_[0-9A-Za-z]{32}`) and the gateway tells a key
//! from a JWT (which starts with `ey`) without trying to parse it.
//!
//! The id is public: it names the key in lists, audit lines and `DELETE
//! /.attach/keys/<id>`. The secret is 32 base62 characters (190 bits) from
//! the operating system's CSPRNG; the gateway never stores it, only a seal
//! over it (see `record`).

use ring::rand::{SecureRandom, SystemRandom};

/// Every key starts with this.
pub const PREFIX: &str = "attach_";
/// Characters of a key's id.
pub const ID_LEN: usize = 12;
/// Characters of a key's secret.
pub const SECRET_LEN: usize = 32;
/// Characters of a whole key.
pub const KEY_LEN: usize = PREFIX.len() + ID_LEN + 1 + SECRET_LEN;

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A key as presented: its id and the whole key.
#[derive(Clone, PartialEq, Eq)]
pub struct PresentedKey<'a> {
    /// The public id.
    pub id: &'a str,
    /// The whole key, as the client sent it.
    pub key: &'a str,
}

impl std::fmt::Debug for PresentedKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Only the id: the key is a secret.
        f.debug_struct("PresentedKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Whether `token` is meant as an API key (it has the prefix), well formed
/// or not. Such a token is never handed to the JWT verifier.
pub fn is_key(token: &str) -> bool {
    token.starts_with(PREFIX)
}

/// Reads a key; `None` unless it has exactly the key's shape.
pub fn parse(key: &str) -> Option<PresentedKey<'_>> {
    let rest = key.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let base62 =
        |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_alphanumeric());
    (base62(id, ID_LEN) && base62(secret, SECRET_LEN)).then_some(PresentedKey { id, key })
}

/// Whether `id` has the shape of a key id (for ids in paths).
pub fn is_id(id: &str) -> bool {
    id.len() == ID_LEN && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Why a key could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the system's random number generator failed")]
pub struct RandomUnavailable;

/// The base62 character a random byte stands for, or `None` for the bytes
/// of 248 and above (4 × 62), which are dropped so that `% 62` has no bias.
fn base62_of(b: u8) -> Option<char> {
    (b < 248).then(|| char::from(ALPHABET[usize::from(b % 62)]))
}

/// `len` base62 characters, uniformly random.
fn random_base62(rng: &SystemRandom, len: usize) -> Result<String, RandomUnavailable> {
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        rng.fill(&mut buf).map_err(|_| RandomUnavailable)?;
        for c in buf.into_iter().filter_map(base62_of) {
            if out.len() == len {
                break;
            }
            out.push(c);
        }
    }
    Ok(out)
}

/// A new key and its id.
pub fn generate() -> Result<(String, String), RandomUnavailable> {
    let rng = SystemRandom::new();
    let id = random_base62(&rng, ID_LEN)?;
    let secret = random_base62(&rng, SECRET_LEN)?;
    Ok((format!("{PREFIX}{id}_{secret}"), id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_key_parses_back_to_its_id() {
        let (key, id) = generate().unwrap();
        assert_eq!(key.len(), KEY_LEN);
        let parsed = parse(&key).unwrap();
        assert_eq!(parsed.id, id);
        assert_eq!(parsed.key, key);
        assert!(is_key(&key) && is_id(&id));
        let shown = format!("{parsed:?}");
        assert!(
            !shown.contains(&key[PREFIX.len() + ID_LEN + 1..]),
            "{shown}"
        );
        assert_eq!(shown, format!("PresentedKey {{ id: {id:?}, .. }}"));
    }

    #[test]
    fn each_character_is_drawn_from_an_unbiased_byte() {
        // 248 = 4 × 62: each character stands for exactly four bytes.
        let mut counts = std::collections::BTreeMap::new();
        for b in 0..=u8::MAX {
            if let Some(c) = base62_of(b) {
                *counts.entry(c).or_insert(0) += 1;
            }
        }
        assert_eq!(counts.len(), 62);
        assert!(counts.values().all(|&n| n == 4), "{counts:?}");
        assert_eq!(base62_of(0), Some('0'));
        assert_eq!(base62_of(247), Some('z'));
        assert_eq!(base62_of(248), None);
    }

    #[test]
    fn keys_differ_and_use_the_whole_alphabet() {
        let keys: Vec<String> = (0..200).map(|_| generate().unwrap().0).collect();
        let distinct: std::collections::BTreeSet<&String> = keys.iter().collect();
        assert_eq!(distinct.len(), keys.len());
        let seen: std::collections::BTreeSet<u8> = keys
            .iter()
            .flat_map(|k| k[PREFIX.len()..].bytes())
            .collect();
        // 200 keys draw 8,800 characters: every one of the 62 shows up.
        assert_eq!(
            seen.iter().filter(|b| b.is_ascii_alphanumeric()).count(),
            62
        );
    }

    #[test]
    fn anything_but_the_exact_shape_is_refused() {
        let id = "A".repeat(ID_LEN);
        let secret = "b".repeat(SECRET_LEN);
        let good = format!("attach_{id}_{secret}");
        assert!(parse(&good).is_some());
        for bad in [
            String::new(),
            format!("Attach_{id}_{secret}"),
            format!("attach-{id}_{secret}"),
            format!("attach_{id}{secret}"),
            format!("attach_{id}_{secret}x"),
            format!("attach_{id}x_{secret}"),
            format!("attach_{}_{secret}", &id[1..]),
            format!("attach_{id}_{}", &secret[1..]),
            format!("attach_{id}_{}-", &secret[1..]),
            format!("attach_{id}_{}\u{e9}", &secret[2..]),
            format!("attach_{id}_{secret}_"),
            "eyJhbGciOiJSUzI1NiJ9.e30.sig".to_owned(),
        ] {
            assert!(parse(&bad).is_none(), "{bad:?} parsed");
        }
        assert!(is_key("attach_anything") && !is_key("eyJ.attach_"));
        assert!(!is_id("short") && !is_id(&format!("{}-", &id[1..])));
    }
}
