//! Encryption at rest: sealed objects and manifests, and the keys that name and seal them.
//!
//! A location with an encryption key stores every object and manifest SEALED: the plain form
//! (an object with its own 8-byte header, or a zstd manifest) cut into 64 KiB segments, each
//! encrypted and authenticated with AES-256-GCM. Layout (see `docs/storage-format.md`):
//!
//! ```text
//! offset 0..6    b"COFFER"           magic
//! offset 6       0x01                object format version
//! offset 7       0x02                codec: sealed
//! offset 8..16   key id              first 8 bytes of derive_key("coffer 2026-12 key id", key)
//! offset 16..40  salt                24 random bytes, new for every object
//! offset 40..    segments            each: ciphertext of up to 64 KiB of plain bytes + 16-byte tag
//! ```
//!
//! The segment key is `keyed_hash(derive_key("coffer 2026-12 object encryption", key), salt)`,
//! one per object; segment `n` (from 0) uses the 12-byte nonce `00 00 00 | n (u64, big-endian) |
//! last`, where `last` is 1 for the final segment and 0 for every other, and authenticates the
//! 40-byte header as associated data, followed, for everything but objects, by the file's path
//! in the location. So a segment cannot be altered, moved, dropped or appended, nor the object
//! cut at a segment boundary, without the open failing; a header naming another key or salt
//! fails too, and a manifest moved to another path does not open there (an object is checked
//! by its name instead: its content must hash to it).
//!
//! Objects in such a location are named by `keyed_hash(derive_key("coffer 2026-12 object
//! names", key), content)` rather than the plain BLAKE3 of their content: equal content still
//! deduplicates, but the storage cannot tell which well-known file (an empty file, a stock
//! configuration) an object holds.

use std::borrow::Cow;
use std::sync::Arc;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use super::{OBJECT_HEADER_LEN, OBJECT_MAGIC, OBJECT_VERSION};
use crate::layout::ContentHash;

/// Byte 7 of a sealed object's header.
pub const SEALED_CODEC: u8 = 2;
/// Length of a sealed object's header: magic, version, codec, key id and salt.
pub const SEALED_HEADER_LEN: usize = OBJECT_HEADER_LEN + KEY_ID_LEN + SALT_LEN;
/// Plain bytes per segment.
pub const SEGMENT_LEN: usize = 64 * 1024;
/// Authentication tag after each segment's ciphertext.
pub const TAG_LEN: usize = 16;
const KEY_ID_LEN: usize = 8;
const SALT_LEN: usize = 24;

const KEY_ID_CONTEXT: &str = "coffer 2026-12 key id";
const NAME_CONTEXT: &str = "coffer 2026-12 object names";
const CIPHER_CONTEXT: &str = "coffer 2026-12 object encryption";

/// The id a sealed object names its key by: not secret, and says nothing about the key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; KEY_ID_LEN]);

impl std::fmt::Display for KeyId {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for byte in self.0 {
            write!(formatter, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for KeyId {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "KeyId({self})")
    }
}

/// A location's encryption key, as an agent's configuration names it, and the keys derived from
/// it. Its `Debug` shows the name and id, never key material.
pub struct ObjectKey {
    name: String,
    id: KeyId,
    naming: [u8; 32],
    cipher: [u8; 32],
}

impl std::fmt::Debug for ObjectKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ObjectKey")
            .field("name", &self.name)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl ObjectKey {
    /// The key `name` made of 32 secret bytes.
    pub fn new(name: impl Into<String>, secret: &[u8; 32]) -> Self {
        let derived = blake3::derive_key(KEY_ID_CONTEXT, secret);
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&derived[..KEY_ID_LEN]);
        Self {
            name: name.into(),
            id: KeyId(id),
            naming: blake3::derive_key(NAME_CONTEXT, secret),
            cipher: blake3::derive_key(CIPHER_CONTEXT, secret),
        }
    }

    /// The key `name` from the text of a key file: 64 hex digits (`openssl rand -hex 32`),
    /// surrounding whitespace ignored. The error never quotes the text.
    pub fn from_hex(name: impl Into<String>, text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.len() != 64 {
            return Err(format!(
                "a key is 64 hex digits (32 bytes, as `openssl rand -hex 32` prints), not {} \
                 characters",
                text.len()
            ));
        }
        let secret = ContentHash::from_hex(&text.to_ascii_lowercase())
            .ok_or("a key is 64 hex digits; this one holds other characters")?;
        Ok(Self::new(name, &secret.0))
    }

    /// The name the agent's configuration gives the key.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The id sealed objects name it by.
    pub fn id(&self) -> KeyId {
        self.id
    }

    fn content_hasher(&self) -> blake3::Hasher {
        blake3::Hasher::new_keyed(&self.naming)
    }

    fn segment_key(&self, salt: &[u8]) -> LessSafeKey {
        let key = blake3::keyed_hash(&self.cipher, salt);
        // AES-256 takes any 32 bytes: `new` only fails on a wrong length.
        let unbound = UnboundKey::new(&AES_256_GCM, key.as_bytes())
            .unwrap_or_else(|_| unreachable!("a 32-byte AES-256 key"));
        LessSafeKey::new(unbound)
    }
}

/// The keys a location is read and written with on one agent: the key new objects are sealed
/// and named with (none: the location is not encrypted), and every key its objects may be
/// sealed with (the current one and, after a rotation, earlier ones kept for reading).
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    write: Option<Arc<ObjectKey>>,
    read: Vec<Arc<ObjectKey>>,
}

impl Keyring {
    /// No encryption: objects and manifests in the clear, named by plain BLAKE3.
    pub fn plain() -> Self {
        Self::default()
    }

    /// Seals with `write` (when given), and opens what any of `read` or `write` sealed.
    pub fn new(write: Option<Arc<ObjectKey>>, mut read: Vec<Arc<ObjectKey>>) -> Self {
        if let Some(key) = &write
            && !read.iter().any(|known| known.id == key.id)
        {
            read.push(key.clone());
        }
        Self { write, read }
    }

    /// Whether the location is encrypted: what is written is sealed, and only sealed objects and
    /// manifests are accepted when read.
    pub fn is_sealed(&self) -> bool {
        self.write.is_some()
    }

    /// The key new objects are sealed with.
    pub fn write_key(&self) -> Option<&ObjectKey> {
        self.write.as_deref()
    }

    /// The hasher that named the contents of an object sealed with the key `sealed_with`
    /// (`None`: in the clear): a pack's contents are named as the pack is. `None` when the
    /// key is not one of these.
    pub fn content_hasher_of(&self, sealed_with: Option<KeyId>) -> Option<blake3::Hasher> {
        match sealed_with {
            None => Some(blake3::Hasher::new()),
            Some(id) => self.find(id).map(|key| key.content_hasher()),
        }
    }

    fn find(&self, id: KeyId) -> Option<Arc<ObjectKey>> {
        self.read.iter().find(|key| key.id == id).cloned()
    }

    /// The hasher that names new objects: keyed with the write key, or plain BLAKE3.
    pub fn content_hasher(&self) -> blake3::Hasher {
        self.write
            .as_deref()
            .map_or_else(blake3::Hasher::new, ObjectKey::content_hasher)
    }

    /// The name of an object holding `content`, as [`Keyring::content_hasher`] makes it.
    pub fn content_hash(&self, content: &[u8]) -> ContentHash {
        ContentHash::from(self.content_hasher().update(content).finalize())
    }

    /// A sealer for one new object (`bound_to` `None`) or one file at the path `bound_to` (a
    /// manifest), `None` for a location in the clear.
    ///
    /// Fails only when the system's random source fails.
    pub fn sealer(&self, bound_to: Option<&str>) -> std::io::Result<Option<Sealer>> {
        self.write
            .as_deref()
            .map(|key| Sealer::new(key, bound_to))
            .transpose()
    }

    /// `plain` sealed with the write key (bound to a path as [`Keyring::sealer`] says), or
    /// unchanged in a location in the clear.
    ///
    /// Fails only when the system's random source fails.
    pub fn seal_bytes<'a>(
        &self,
        plain: &'a [u8],
        bound_to: Option<&str>,
    ) -> std::io::Result<Cow<'a, [u8]>> {
        match self.sealer(bound_to)? {
            None => Ok(Cow::Borrowed(plain)),
            Some(mut sealer) => {
                let mut sealed = sealer.push(plain);
                sealed.extend_from_slice(&sealer.finish());
                Ok(Cow::Owned(sealed))
            }
        }
    }

    /// The plain form of a whole stored object or manifest (see [`Unsealer`]).
    pub fn open_bytes(&self, stored: &[u8], bound_to: Option<&str>) -> Result<Vec<u8>, SealError> {
        let mut unsealer = Unsealer::new(self.clone(), bound_to);
        let mut plain = unsealer.push(stored)?.into_owned();
        plain.extend_from_slice(&unsealer.finish()?);
        Ok(plain)
    }
}

/// Why stored bytes could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// Sealed with a key this agent does not hold for the location.
    #[error(
        "sealed with key id {0}, which no encryption key this agent binds to the location has \
         (keys are [[keys]] entries of the agent's configuration)"
    )]
    MissingKey(KeyId),
    /// In the clear, in a location that is encrypted: not written by Coffer with its key.
    #[error("stored in the clear, but the location is encrypted: Coffer did not write it")]
    NotSealed,
    /// Sealed, but altered, cut or extended since.
    #[error("sealed data does not authenticate ({0}): it was altered or cut since it was written")]
    Damaged(String),
}

fn nonce(counter: u64, last: bool) -> Nonce {
    let mut bytes = [0u8; NONCE_LEN];
    bytes[3..11].copy_from_slice(&counter.to_be_bytes());
    bytes[11] = u8::from(last);
    Nonce::assume_unique_for_key(bytes)
}

/// The stored size of `plain_len` plain bytes once sealed.
pub fn sealed_len(plain_len: u64) -> u64 {
    let segments = plain_len.div_ceil(SEGMENT_LEN as u64).max(1);
    (SEALED_HEADER_LEN as u64)
        .saturating_add(plain_len)
        .saturating_add(segments.saturating_mul(TAG_LEN as u64))
}

/// Seals one object or manifest as its plain bytes stream through: [`Sealer::push`] returns
/// the sealed bytes that are ready (the header first), [`Sealer::finish`] the rest. At most one
/// segment is held back, since the last one is sealed differently.
pub struct Sealer {
    key: LessSafeKey,
    header: [u8; SEALED_HEADER_LEN],
    /// The header, then the path the file is bound to (if any).
    aad: Vec<u8>,
    header_sent: bool,
    counter: u64,
    pending: Vec<u8>,
}

impl Sealer {
    fn new(key: &ObjectKey, bound_to: Option<&str>) -> std::io::Result<Self> {
        let mut salt = [0u8; SALT_LEN];
        SystemRandom::new()
            .fill(&mut salt)
            .map_err(|_| std::io::Error::other("the system's random source failed"))?;
        let mut header = [0u8; SEALED_HEADER_LEN];
        header[..6].copy_from_slice(OBJECT_MAGIC);
        header[6] = OBJECT_VERSION;
        header[7] = SEALED_CODEC;
        header[8..16].copy_from_slice(&key.id.0);
        header[16..].copy_from_slice(&salt);
        Ok(Self {
            key: key.segment_key(&salt),
            aad: associated_data(&header, bound_to),
            header,
            header_sent: false,
            counter: 0,
            pending: Vec::with_capacity(2 * SEGMENT_LEN),
        })
    }

    fn start(&mut self, out: &mut Vec<u8>) {
        if !self.header_sent {
            out.extend_from_slice(&self.header);
            self.header_sent = true;
        }
    }

    fn seal_segment(&mut self, plain: &[u8], last: bool, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(plain);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                nonce(self.counter, last),
                Aad::from(&self.aad),
                &mut out[start..],
            )
            // Only fails past 2^36 bytes in one segment.
            .unwrap_or_else(|_| unreachable!("a 64 KiB segment seals"));
        out.extend_from_slice(tag.as_ref());
        self.counter += 1;
    }

    /// Feeds plain bytes; returns the sealed bytes ready to be stored. A segment is sealed once
    /// more bytes follow it (the last one is sealed by [`Sealer::finish`]); whole segments are
    /// sealed straight from `plain`, only a remainder is kept.
    pub fn push(&mut self, mut plain: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(plain.len() + plain.len() / 1024 + SEALED_HEADER_LEN);
        self.start(&mut out);
        if !self.pending.is_empty() {
            let take = (SEGMENT_LEN - self.pending.len()).min(plain.len());
            self.pending.extend_from_slice(&plain[..take]);
            plain = &plain[take..];
            if plain.is_empty() {
                return out;
            }
            let pending = std::mem::take(&mut self.pending);
            self.seal_segment(&pending, false, &mut out);
            self.pending = pending;
            self.pending.clear();
        }
        while plain.len() > SEGMENT_LEN {
            let (segment, rest) = plain.split_at(SEGMENT_LEN);
            self.seal_segment(segment, false, &mut out);
            plain = rest;
        }
        self.pending.extend_from_slice(plain);
        out
    }

    /// The last segment (and the header, if nothing was pushed).
    pub fn finish(mut self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.pending.len() + TAG_LEN + SEALED_HEADER_LEN);
        self.start(&mut out);
        let pending = std::mem::take(&mut self.pending);
        self.seal_segment(&pending, true, &mut out);
        out
    }
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Sealer")
            .field("segments", &self.counter)
            .finish_non_exhaustive()
    }
}

enum UnsealState {
    /// The first bytes, until they tell sealed from clear.
    Header(Vec<u8>),
    /// Sealed: segments are opened as they complete.
    Sealed(Box<SealedStream>),
    /// In the clear, in a location that is not encrypted: passed through.
    Clear,
    /// An error was returned: nothing more is opened.
    Failed,
}

/// The state of opening one sealed stream.
struct SealedStream {
    key: LessSafeKey,
    aad: Vec<u8>,
    counter: u64,
    pending: Vec<u8>,
}

/// Opens stored bytes as they stream in: a sealed object or manifest is authenticated and
/// decrypted segment by segment; bytes in the clear pass through unchanged, unless the keyring
/// is sealed (an encrypted location accepts only what its keys sealed).
pub struct Unsealer {
    keys: Keyring,
    /// The path the stored file is bound to: `None` for objects.
    bound_to: Option<String>,
    state: UnsealState,
    /// The key of a sealed stream, once its header is read.
    key: Option<Arc<ObjectKey>>,
}

impl std::fmt::Debug for Unsealer {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Unsealer")
            .field("key", &self.key)
            .field("started", &self.started())
            .finish_non_exhaustive()
    }
}

impl Unsealer {
    /// An unsealer with the keys of a location, for an object (`bound_to` `None`) or the file at
    /// the path `bound_to` (a manifest).
    pub fn new(keys: Keyring, bound_to: Option<&str>) -> Self {
        Self {
            keys,
            bound_to: bound_to.map(str::to_string),
            state: UnsealState::Header(Vec::with_capacity(SEALED_HEADER_LEN)),
            key: None,
        }
    }

    /// The hasher that checks the opened content against its object's name: keyed with the
    /// key that sealed it, or plain BLAKE3 for an object in the clear. Call after the first
    /// bytes are pushed (before, it is the plain hasher).
    pub fn content_hasher(&self) -> blake3::Hasher {
        self.key
            .as_deref()
            .map_or_else(blake3::Hasher::new, ObjectKey::content_hasher)
    }

    /// The id of the key that sealed the stream (`None` in the clear, or before its header).
    pub fn key_id(&self) -> Option<KeyId> {
        self.key.as_deref().map(ObjectKey::id)
    }

    /// Whether the header has been read, so [`Unsealer::content_hasher`] is final.
    pub fn started(&self) -> bool {
        !matches!(self.state, UnsealState::Header(_))
    }

    /// Feeds stored bytes; returns the plain bytes they complete (borrowed when in the clear).
    /// After an error, every call fails.
    pub fn push<'a>(&mut self, stored: &'a [u8]) -> Result<Cow<'a, [u8]>, SealError> {
        let pushed = self.push_inner(stored);
        if pushed.is_err() {
            self.state = UnsealState::Failed;
        }
        pushed
    }

    fn push_inner<'a>(&mut self, mut stored: &'a [u8]) -> Result<Cow<'a, [u8]>, SealError> {
        if let UnsealState::Header(header) = &mut self.state {
            // The object header first, then (sealed) the rest of the sealed one.
            let wanted = |header: &[u8]| {
                if is_sealed(header) {
                    SEALED_HEADER_LEN
                } else {
                    OBJECT_HEADER_LEN
                }
            };
            while header.len() < wanted(header) && !stored.is_empty() {
                let take = (wanted(header) - header.len()).min(stored.len());
                header.extend_from_slice(&stored[..take]);
                stored = &stored[take..];
            }
            if header.len() < wanted(header) {
                return Ok(Cow::Borrowed(&[]));
            }
            let header = std::mem::take(header);
            if !is_sealed(&header) {
                if self.keys.is_sealed() {
                    return Err(SealError::NotSealed);
                }
                self.state = UnsealState::Clear;
                let mut plain = header;
                plain.extend_from_slice(stored);
                return Ok(Cow::Owned(plain));
            }
            self.begin_sealed(&header)?;
        }
        match &mut self.state {
            UnsealState::Header(_) => Ok(Cow::Borrowed(&[])),
            UnsealState::Clear => Ok(Cow::Borrowed(stored)),
            UnsealState::Failed => Err(SealError::Damaged("opened after a failure".into())),
            UnsealState::Sealed(sealed) => {
                let SealedStream {
                    key,
                    aad,
                    counter,
                    pending,
                } = sealed.as_mut();
                pending.extend_from_slice(stored);
                let mut plain = Vec::with_capacity(pending.len());
                let mut opened_up_to = 0;
                while pending.len() - opened_up_to > SEGMENT_LEN + TAG_LEN {
                    let segment = &mut pending[opened_up_to..opened_up_to + SEGMENT_LEN + TAG_LEN];
                    plain.extend_from_slice(open_segment(key, aad, *counter, false, segment)?);
                    *counter += 1;
                    opened_up_to += SEGMENT_LEN + TAG_LEN;
                }
                pending.drain(..opened_up_to);
                Ok(Cow::Owned(plain))
            }
        }
    }

    fn begin_sealed(&mut self, header: &[u8]) -> Result<(), SealError> {
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&header[8..16]);
        let id = KeyId(id);
        let key = self.keys.find(id).ok_or(SealError::MissingKey(id))?;
        self.state = UnsealState::Sealed(Box::new(SealedStream {
            key: key.segment_key(&header[16..SEALED_HEADER_LEN]),
            aad: associated_data(&header[..SEALED_HEADER_LEN], self.bound_to.as_deref()),
            counter: 0,
            pending: Vec::with_capacity(2 * (SEGMENT_LEN + TAG_LEN)),
        }));
        self.key = Some(key);
        Ok(())
    }

    /// The plain bytes of the last segment; fails when the stream ended early or was cut.
    pub fn finish(self) -> Result<Vec<u8>, SealError> {
        match self.state {
            UnsealState::Header(header) if header.is_empty() => {
                if self.keys.is_sealed() {
                    Err(SealError::NotSealed)
                } else {
                    Ok(Vec::new())
                }
            }
            UnsealState::Header(header) => {
                if is_sealed(&header) || self.keys.is_sealed() {
                    Err(SealError::Damaged(format!(
                        "{} bytes, shorter than the sealed header",
                        header.len()
                    )))
                } else {
                    Ok(header)
                }
            }
            UnsealState::Clear => Ok(Vec::new()),
            UnsealState::Failed => Err(SealError::Damaged("opened after a failure".into())),
            UnsealState::Sealed(sealed) => {
                let SealedStream {
                    key,
                    aad,
                    counter,
                    mut pending,
                } = *sealed;
                // Only a seal of nothing at all ends with an empty segment.
                if counter > 0 && pending.len() == TAG_LEN {
                    return Err(SealError::Damaged(format!(
                        "an empty last segment after {counter} full ones"
                    )));
                }
                Ok(open_segment(&key, &aad, counter, true, &mut pending)?.to_vec())
            }
        }
    }
}

/// Whether stored bytes (at least their first 8) start a sealed object.
pub fn is_sealed(stored: &[u8]) -> bool {
    stored.len() >= OBJECT_HEADER_LEN
        && &stored[..6] == OBJECT_MAGIC
        && stored[6] == OBJECT_VERSION
        && stored[7] == SEALED_CODEC
}

/// What each segment authenticates besides itself: the sealed header, then the path the file is
/// bound to (manifests; objects are bound to nothing).
fn associated_data(header: &[u8], bound_to: Option<&str>) -> Vec<u8> {
    let mut aad = header.to_vec();
    if let Some(path) = bound_to {
        aad.extend_from_slice(path.as_bytes());
    }
    aad
}

fn open_segment<'a>(
    key: &LessSafeKey,
    aad: &[u8],
    counter: u64,
    last: bool,
    segment: &'a mut [u8],
) -> Result<&'a [u8], SealError> {
    if segment.len() < TAG_LEN {
        return Err(SealError::Damaged(format!(
            "segment {counter} is {} bytes, shorter than its tag",
            segment.len()
        )));
    }
    key.open_in_place(nonce(counter, last), Aad::from(aad), segment)
        .map(|plain| &*plain)
        .map_err(|_| {
            SealError::Damaged(format!(
                "segment {counter}{} fails its authentication tag",
                if last { ", the last," } else { "" }
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str, byte: u8) -> Arc<ObjectKey> {
        Arc::new(ObjectKey::new(name, &[byte; 32]))
    }

    fn sealed_ring(key: &Arc<ObjectKey>) -> Keyring {
        Keyring::new(Some(key.clone()), Vec::new())
    }

    /// Opens `stored` fed in pieces of `piece` bytes.
    fn open_in_pieces(keys: &Keyring, stored: &[u8], piece: usize) -> Result<Vec<u8>, SealError> {
        let mut unsealer = Unsealer::new(keys.clone(), None);
        let mut plain = Vec::new();
        for chunk in stored.chunks(piece.max(1)) {
            plain.extend_from_slice(&unsealer.push(chunk)?);
        }
        plain.extend_from_slice(&unsealer.finish()?);
        Ok(plain)
    }

    #[test]
    fn sealed_bytes_open_to_the_plain_ones_whatever_the_pieces() {
        let current = key("current", 1);
        let keys = sealed_ring(&current);
        for len in [
            0,
            1,
            SEGMENT_LEN - 1,
            SEGMENT_LEN,
            SEGMENT_LEN + 1,
            3 * SEGMENT_LEN,
            3 * SEGMENT_LEN + 17,
        ] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            // Sealed in uneven pieces, opened in others.
            let mut sealer = keys.sealer(None).expect("random").expect("sealed");
            let mut stored = Vec::new();
            for chunk in plain.chunks(10_000) {
                stored.extend_from_slice(&sealer.push(chunk));
            }
            stored.extend_from_slice(&sealer.finish());
            assert_eq!(stored.len() as u64, sealed_len(len as u64), "{len} bytes");
            assert!(is_sealed(&stored));
            if len > 64 {
                assert!(
                    !stored.windows(64).any(|window| window == &plain[..64]),
                    "plain bytes stored"
                );
            }
            for piece in [1, 7, 40, 4096, SEGMENT_LEN + TAG_LEN, usize::MAX] {
                assert_eq!(
                    open_in_pieces(&keys, &stored, piece).expect("open"),
                    plain,
                    "{len} bytes in pieces of {piece}"
                );
            }
        }
    }

    #[test]
    fn altered_cut_or_extended_sealed_bytes_fail_to_open() {
        let current = key("current", 1);
        let keys = sealed_ring(&current);
        let plain = vec![42u8; 3 * SEGMENT_LEN + 5];
        let stored = keys.seal_bytes(&plain, None).expect("seal").into_owned();
        let fails = |stored: &[u8]| {
            let error = keys.open_bytes(stored, None).expect_err("must not open");
            assert!(matches!(error, SealError::Damaged(_)), "{error}");
        };
        // Every region: header (key id aside), salt, each segment, each tag.
        for offset in [
            0,
            17,
            39,
            40,
            SEGMENT_LEN,
            SEALED_HEADER_LEN + SEGMENT_LEN + 3,
            stored.len() - 1,
        ] {
            let mut altered = stored.clone();
            altered[offset] ^= 0x40;
            if offset < 6 {
                // The magic altered: no longer sealed, refused by an encrypted location.
                assert_eq!(keys.open_bytes(&altered, None), Err(SealError::NotSealed));
            } else {
                fails(&altered);
            }
        }
        // Bound to a path: opens there only.
        let bound = keys
            .seal_bytes(b"backup manifest", Some("a/backup.json"))
            .expect("seal");
        assert_eq!(
            keys.open_bytes(&bound, Some("a/backup.json"))
                .expect("open"),
            b"backup manifest"
        );
        for elsewhere in [Some("b/backup.json"), None] {
            assert!(matches!(
                keys.open_bytes(&bound, elsewhere),
                Err(SealError::Damaged(_))
            ));
        }
        // After a failure, nothing more opens.
        let mut unsealer = Unsealer::new(keys.clone(), None);
        let mut broken = stored.clone();
        broken[SEALED_HEADER_LEN + 5] ^= 1;
        assert!(
            unsealer
                .push(&broken[..SEALED_HEADER_LEN + 2 * SEGMENT_LEN])
                .is_err()
        );
        assert!(
            unsealer
                .push(&stored[SEALED_HEADER_LEN + 2 * SEGMENT_LEN..])
                .is_err()
        );
        assert!(unsealer.finish().is_err());
        // Exactly one segment: it is the last one, full (the sealer never adds an empty one).
        let mut sealer = keys.sealer(None).expect("random").expect("sealed");
        let mut exact = sealer.push(&vec![1u8; SEGMENT_LEN]);
        exact.extend_from_slice(&sealer.finish());
        assert_eq!(
            keys.open_bytes(&exact, None).expect("open").len(),
            SEGMENT_LEN
        );

        // Cut at a segment boundary, cut mid-segment, or extended.
        let boundary = SEALED_HEADER_LEN + 2 * (SEGMENT_LEN + TAG_LEN);
        fails(&stored[..boundary]);
        fails(&stored[..stored.len() - 3]);
        fails(&stored[..SEALED_HEADER_LEN - 2]);
        let mut extended = stored.clone();
        extended.extend_from_slice(&stored[SEALED_HEADER_LEN..SEALED_HEADER_LEN + 100]);
        fails(&extended);
        // Two segments swapped.
        let mut swapped = stored.clone();
        let first = SEALED_HEADER_LEN..SEALED_HEADER_LEN + SEGMENT_LEN + TAG_LEN;
        let second = first.end..first.end + SEGMENT_LEN + TAG_LEN;
        let copy = stored[first.clone()].to_vec();
        swapped.copy_within(second.clone(), first.start);
        swapped[second].copy_from_slice(&copy);
        fails(&swapped);
    }

    #[test]
    fn keys_are_told_apart_by_id_and_rotation_keeps_old_objects_readable() {
        let old = key("old", 1);
        let new = key("new", 2);
        let stored_old = sealed_ring(&old)
            .seal_bytes(b"old content", None)
            .expect("seal");
        // A location rotated to `new` that keeps `old` for reading opens both.
        let rotated = Keyring::new(Some(new.clone()), vec![old.clone()]);
        assert_eq!(
            rotated.open_bytes(&stored_old, None).expect("old"),
            b"old content"
        );
        let stored_new = rotated.seal_bytes(b"new content", None).expect("seal");
        assert_eq!(&stored_new[8..16], &new.id().0);
        // Without the old key: the id it needs, not a vague failure.
        let error = sealed_ring(&new)
            .open_bytes(&stored_old, None)
            .expect_err("old key gone");
        assert_eq!(error, SealError::MissingKey(old.id()));
        assert!(error.to_string().contains(&old.id().to_string()), "{error}");
        // A location in the clear opens nothing sealed, and passes clear bytes through.
        assert_eq!(
            Keyring::plain().open_bytes(&stored_new, None),
            Err(SealError::MissingKey(new.id()))
        );
        assert_eq!(
            Keyring::plain().open_bytes(b"clear", None).expect("clear"),
            b"clear"
        );
        assert_eq!(
            Keyring::plain()
                .open_bytes(b"COFFER\x01\x00body", None)
                .expect("clear object"),
            b"COFFER\x01\x00body"
        );
        // An encrypted location refuses what is in the clear.
        assert_eq!(
            sealed_ring(&new).open_bytes(b"COFFER\x01\x00body", None),
            Err(SealError::NotSealed)
        );
        // Equal content gets a keyed name per key, and two seals of it differ (fresh salt).
        assert_ne!(sealed_ring(&old).content_hash(b"x"), ContentHash::of(b"x"));
        assert_ne!(
            sealed_ring(&old).content_hash(b"x"),
            sealed_ring(&new).content_hash(b"x")
        );
        assert_eq!(Keyring::plain().content_hash(b"x"), ContentHash::of(b"x"));
        assert_ne!(
            sealed_ring(&new).seal_bytes(b"same", None).expect("seal"),
            sealed_ring(&new).seal_bytes(b"same", None).expect("seal")
        );
    }

    #[test]
    #[ignore = "benchmark: run with --release -- --ignored seal_throughput --nocapture"]
    fn seal_throughput() {
        let keys = sealed_ring(&key("bench", 9));
        let block = vec![0x5au8; 1024 * 1024];
        let blocks = 512;
        let started = std::time::Instant::now();
        let mut sealer = keys.sealer(None).expect("random").expect("sealed");
        let mut stored = Vec::with_capacity(blocks * (block.len() + 512));
        for _ in 0..blocks {
            stored.extend_from_slice(&sealer.push(&block));
        }
        stored.extend_from_slice(&sealer.finish());
        let sealed = started.elapsed();
        let started = std::time::Instant::now();
        let mut unsealer = Unsealer::new(keys.clone(), None);
        let mut opened = 0usize;
        for piece in stored.chunks(1024 * 1024) {
            opened += unsealer.push(piece).expect("open").len();
        }
        opened += unsealer.finish().expect("open").len();
        let open = started.elapsed();
        assert_eq!(opened, blocks * block.len());
        let mib = blocks as f64;
        println!(
            "seal {:.0} MiB/s, open {:.0} MiB/s (one core, {blocks} MiB)",
            mib / sealed.as_secs_f64(),
            mib / open.as_secs_f64()
        );
    }

    #[test]
    fn key_files_hold_64_hex_digits_and_errors_never_quote_them() {
        let text = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF\n";
        let key = ObjectKey::from_hex("k", text).expect("parse");
        assert_eq!(key.name(), "k");
        assert!(!format!("{key:?}").contains("0011"), "{key:?}");
        for bad in ["", "00", &"zq".repeat(32), &"7".repeat(65)] {
            let error = ObjectKey::from_hex("k", bad).expect_err("bad key");
            assert!(error.contains("64 hex digits"), "{error}");
            assert!(bad.len() < 8 || !error.contains(&bad[..8]), "{error}");
        }
    }
}
