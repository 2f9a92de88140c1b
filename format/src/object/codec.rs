//! The object format: the 8-byte header, the codec it names, a location's compression setting,
//! and the encoders that turn content (in memory or streamed from a file) into an object.

use std::fs::File;
use std::io;

use bytes::Bytes;

use super::seal::{Keyring, sealed_len};
use super::{READ_BLOCK, RateLimiter, read_full};
use crate::layout::ContentHash;

/// First six bytes of every object.
pub const OBJECT_MAGIC: &[u8; 6] = b"COFFER";
/// Version of the object format, byte 6 of every object.
pub const OBJECT_VERSION: u8 = 1;
/// Length of the header; the body starts at this offset.
pub const OBJECT_HEADER_LEN: usize = 8;

/// How an object's body is encoded (byte 7 of the header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// The body is the content itself.
    Raw = 0,
    /// The body is zstd: one or more frames whose concatenated output is the content.
    Zstd = 1,
}

impl Codec {
    /// The 8-byte header of an object with this codec.
    pub fn header(self) -> [u8; OBJECT_HEADER_LEN] {
        let mut header = [0u8; OBJECT_HEADER_LEN];
        header[..6].copy_from_slice(OBJECT_MAGIC);
        header[6] = OBJECT_VERSION;
        header[7] = self as u8;
        header
    }

    /// The codec named by an object's header; `Err` says what is wrong with it.
    pub fn from_header(header: &[u8]) -> Result<Self, String> {
        if header.len() < OBJECT_HEADER_LEN {
            return Err(format!(
                "object is {} bytes long, shorter than its {OBJECT_HEADER_LEN}-byte header",
                header.len()
            ));
        }
        if &header[..6] != OBJECT_MAGIC {
            return Err("object does not start with \"COFFER\"".into());
        }
        if header[6] != OBJECT_VERSION {
            return Err(format!(
                "object format version {} is not supported (this Coffer reads {OBJECT_VERSION})",
                header[6]
            ));
        }
        match header[7] {
            0 => Ok(Self::Raw),
            1 => Ok(Self::Zstd),
            other => Err(format!("unknown object codec {other}")),
        }
    }
}

/// How an upload stores the content of the objects it writes: the setting of a location. Each
/// object records its own [`Codec`], so objects stored under different settings mix freely.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Every object raw: no CPU spent compressing.
    None,
    /// zstd at this level for each object whose first block it shrinks enough
    /// ([`UploadOptions::max_compressed_ratio`](super::UploadOptions::max_compressed_ratio)); the
    /// others raw.
    Zstd {
        /// The zstd level, within [`Compression::ZSTD_LEVELS`].
        level: i32,
    },
}

impl Compression {
    /// The zstd levels a location may use. Negative levels are faster and compress less; above
    /// 12, each compression context takes over 16 MiB (one per file in flight), and compression
    /// runs at under 30 MB/s per core.
    pub const ZSTD_LEVELS: std::ops::RangeInclusive<i32> = -7..=12;

    /// zstd at level 1: on text about 330 MB/s per core, a third of the size.
    pub const DEFAULT: Self = Self::Zstd { level: 1 };

    /// zstd at `level`, or why that level is refused.
    pub fn zstd(level: i32) -> Result<Self, String> {
        if Self::ZSTD_LEVELS.contains(&level) && level != 0 {
            Ok(Self::Zstd { level })
        } else {
            Err(format!(
                "zstd level {level} is not supported: use {} to {}, but not 0",
                Self::ZSTD_LEVELS.start(),
                Self::ZSTD_LEVELS.end()
            ))
        }
    }

    /// The zstd level, when compressing at all.
    pub fn zstd_level(self) -> Option<i32> {
        match self {
            Self::None => None,
            Self::Zstd { level } => Some(level),
        }
    }
}

impl Default for Compression {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// `none`, or `zstd:<level>`: the form cofferctl takes and the catalog stores.
impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("none"),
            Self::Zstd { level } => write!(f, "zstd:{level}"),
        }
    }
}

/// Parses `none`, `zstd` (level 1) or `zstd:<level>`.
impl std::str::FromStr for Compression {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.split_once(':') {
            None if text == "none" => Ok(Self::None),
            None if text == "zstd" => Ok(Self::DEFAULT),
            Some(("zstd", level)) => level
                .parse::<i32>()
                .map_err(|_| format!("{level:?} is not a zstd level (a whole number)"))
                .and_then(Self::zstd),
            _ => Err(format!(
                "{text:?} is not a compression: use none, zstd or zstd:<level>"
            )),
        }
    }
}

/// The stored sizes an object of `content_size` bytes of content can have, whatever its codec:
/// quick validation calls an object outside them damaged without reading it.
///
/// Raw, the body is the content. Zstd (chosen only when the first 1 MiB block shrinks) is one
/// frame per 1 MiB block, and a frame is at least 10 bytes (magic, frame and block headers)
/// and at most zstd's bound for the block (`n + n/256` and change) when a later block does not
/// compress.
pub fn stored_size_range(content_size: u64) -> std::ops::RangeInclusive<u64> {
    let header = OBJECT_HEADER_LEN as u64;
    let block = READ_BLOCK as u64;
    let blocks = content_size.div_ceil(block).max(1);
    let per_block_overhead = block / 256 + 128;
    let least = header + content_size.min(10);
    let most = header
        .saturating_add(content_size)
        .saturating_add(blocks.saturating_mul(per_block_overhead));
    least..=most
}

/// [`stored_size_range`] for a location whose objects are sealed (see
/// [`Keyring`](super::Keyring)): each plain object, sealed.
pub fn sealed_stored_size_range(content_size: u64) -> std::ops::RangeInclusive<u64> {
    let plain = stored_size_range(content_size);
    sealed_len(*plain.start())..=sealed_len(*plain.end())
}

/// The object form of `content`: header and raw or zstd body, sealed when `keys` say so.
pub(super) fn encode_bytes(
    content: &[u8],
    level: Option<i32>,
    max_ratio: f64,
    keys: &Keyring,
) -> io::Result<(Vec<u8>, bool)> {
    let (object, compressed) = encode_plain_bytes(content, level, max_ratio)?;
    if keys.is_sealed() {
        return Ok((keys.seal_bytes(&object, None)?.into_owned(), compressed));
    }
    Ok((object, compressed))
}

fn encode_plain_bytes(
    content: &[u8],
    level: Option<i32>,
    max_ratio: f64,
) -> io::Result<(Vec<u8>, bool)> {
    if let Some(level) = level
        && !content.is_empty()
    {
        let compressed = compress_reusing_context(content, level)?;
        if (compressed.len() as f64) <= content.len() as f64 * max_ratio {
            let mut object = Vec::with_capacity(OBJECT_HEADER_LEN + compressed.len());
            object.extend_from_slice(&Codec::Zstd.header());
            object.extend_from_slice(&compressed);
            return Ok((object, true));
        }
    }
    let mut object = Vec::with_capacity(OBJECT_HEADER_LEN + content.len());
    object.extend_from_slice(&Codec::Raw.header());
    object.extend_from_slice(content);
    Ok((object, false))
}

/// [`encode_bytes`] into `object`, whose allocation is reused (its content is replaced): for
/// callers that store many objects of a few MiB one after another (packs), which would otherwise
/// allocate and free two such blocks per object. Returns whether the body is zstd.
pub(super) fn encode_bytes_into(
    content: &[u8],
    object: &mut Vec<u8>,
    level: Option<i32>,
    max_ratio: f64,
    keys: &Keyring,
) -> io::Result<bool> {
    object.clear();
    let mut compressed = false;
    if let Some(level) = level
        && !content.is_empty()
    {
        object.extend_from_slice(&Codec::Zstd.header());
        object.resize(
            OBJECT_HEADER_LEN + zstd::zstd_safe::compress_bound(content.len()),
            0,
        );
        let written = with_compressor(level, |compressor| {
            compressor.compress_to_buffer(content, &mut object[OBJECT_HEADER_LEN..])
        })?;
        object.truncate(OBJECT_HEADER_LEN + written);
        compressed = (written as f64) <= content.len() as f64 * max_ratio;
    }
    if !compressed {
        object.clear();
        object.extend_from_slice(&Codec::Raw.header());
        object.extend_from_slice(content);
    }
    if keys.is_sealed() {
        let sealed = keys.seal_bytes(object, None)?.into_owned();
        *object = sealed;
    }
    Ok(compressed)
}

thread_local! {
    /// One zstd compression context per (blocking) thread, reused from one small file to the
    /// next: creating one per file cost as much as compressing a small file.
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs `work` with this thread's compression context at `level`.
fn with_compressor<T>(
    level: i32,
    work: impl FnOnce(&mut zstd::bulk::Compressor<'static>) -> io::Result<T>,
) -> io::Result<T> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        let compressor = match &mut *slot {
            Some((current, compressor)) if *current == level => compressor,
            slot => &mut slot.insert((level, zstd::bulk::Compressor::new(level)?)).1,
        };
        work(compressor)
    })
}

/// `zstd::bulk::compress` with this thread's context.
fn compress_reusing_context(content: &[u8], level: i32) -> io::Result<Vec<u8>> {
    with_compressor(level, |compressor| compressor.compress(content))
}

/// What the encoding thread learnt about the file.
pub(super) struct EncodeSummary {
    pub(super) hash: ContentHash,
    pub(super) read_bytes: u64,
    /// Whether the body is zstd.
    pub(super) compressed: bool,
}

/// How [`encode_file`] encodes: the location's compression and keys.
pub(super) struct Encoding<'a> {
    pub(super) level: Option<i32>,
    pub(super) max_ratio: f64,
    pub(super) limiter: Option<&'a RateLimiter>,
    pub(super) keys: &'a Keyring,
}

/// The encoding thread of [`upload_file`](super::upload_file): reads, hashes, decides the codec
/// from the first block, compresses, seals (an encrypted location), and sends the header then
/// the body to the writer.
pub(super) fn encode_file(
    file: File,
    send: &mut dyn FnMut(Bytes) -> io::Result<()>,
    encoding: &Encoding<'_>,
) -> io::Result<EncodeSummary> {
    let Some(mut sealer) = encoding.keys.sealer(None)? else {
        return encode_plain_file(file, send, encoding);
    };
    let summary = encode_plain_file(
        file,
        &mut |plain: Bytes| {
            let sealed = sealer.push(&plain);
            if sealed.is_empty() {
                Ok(())
            } else {
                send(Bytes::from(sealed))
            }
        },
        encoding,
    )?;
    send(Bytes::from(sealer.finish()))?;
    Ok(summary)
}

fn encode_plain_file(
    mut file: File,
    send: &mut dyn FnMut(Bytes) -> io::Result<()>,
    encoding: &Encoding<'_>,
) -> io::Result<EncodeSummary> {
    let Encoding {
        level,
        max_ratio,
        limiter,
        keys,
    } = *encoding;
    let mut hasher = keys.content_hasher();
    let mut read_bytes = 0u64;
    let mut read_block = |hasher: &mut blake3::Hasher| -> io::Result<Bytes> {
        let mut block = vec![0u8; READ_BLOCK];
        let read = read_full(&mut file, &mut block)?;
        block.truncate(read);
        if let Some(limiter) = limiter
            && read > 0
        {
            limiter.acquire_blocking(read as u64);
        }
        hasher.update(&block);
        read_bytes += read as u64;
        Ok(Bytes::from(block))
    };

    let first = read_block(&mut hasher)?;
    // Each 1 MiB block is compressed on its own, as one frame, from this thread's reused
    // context: one-shot compression of a contiguous block runs about twice as fast as a single
    // streaming frame, whose ring buffer sends most blocks down zstd's slower external-
    // dictionary path; the window (512 KiB at level 1) spans less than a block anyway.
    let first_frame = match level {
        Some(level) if !first.is_empty() => Some(compress_reusing_context(&first, level)?)
            .filter(|frame| (frame.len() as f64) <= first.len() as f64 * max_ratio)
            .map(|frame| (frame, level)),
        _ => None,
    };

    let compressed = first_frame.is_some();
    match first_frame {
        None => {
            send(Bytes::copy_from_slice(&Codec::Raw.header()))?;
            let mut block = first;
            while !block.is_empty() {
                send(block)?;
                block = read_block(&mut hasher)?;
            }
        }
        Some((frame, level)) => {
            send(Bytes::copy_from_slice(&Codec::Zstd.header()))?;
            send(Bytes::from(frame))?;
            loop {
                let block = read_block(&mut hasher)?;
                if block.is_empty() {
                    break;
                }
                send(Bytes::from(compress_reusing_context(&block, level)?))?;
            }
        }
    }
    Ok(EncodeSummary {
        hash: ContentHash::from(hasher.finalize()),
        read_bytes,
        compressed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_encoding_of_content_is_inside_its_stored_size_range() {
        let text: Vec<u8> = (0..3 * READ_BLOCK + 5)
            .map(|i| b"log line 17: compaction done\n"[i % 29])
            .collect();
        let noise = crate::object::tests::random_bytes(2 * READ_BLOCK, 7);
        for content in [&b""[..], b"x", b"0123456789abcdef", &text, &noise] {
            for level in [None, Some(1), Some(19)] {
                let (object, _) =
                    encode_bytes(content, level, 1.0, &Keyring::plain()).expect("encode");
                let range = stored_size_range(content.len() as u64);
                assert!(
                    range.contains(&(object.len() as u64)),
                    "{} bytes stored as {} outside {range:?}",
                    content.len(),
                    object.len()
                );
                let (sealed, _) =
                    encode_bytes(content, level, 1.0, &crate::object::tests::sealed_keys())
                        .expect("encode sealed");
                let range = sealed_stored_size_range(content.len() as u64);
                assert!(
                    range.contains(&(sealed.len() as u64)),
                    "{} bytes sealed as {} outside {range:?}",
                    content.len(),
                    sealed.len()
                );
            }
        }
        // A truncated raw object, or one cut to its header, is outside.
        assert!(!stored_size_range(1000).contains(&8));
        assert!(!stored_size_range(1000).contains(&(8 + 1000 + 5000)));
    }

    #[test]
    fn compression_settings_parse_and_print_as_cofferctl_and_the_catalog_spell_them() {
        for (text, expected) in [
            ("none", Compression::None),
            ("zstd", Compression::Zstd { level: 1 }),
            ("zstd:1", Compression::Zstd { level: 1 }),
            ("zstd:-7", Compression::Zstd { level: -7 }),
            ("zstd:12", Compression::Zstd { level: 12 }),
        ] {
            assert_eq!(text.parse::<Compression>(), Ok(expected), "{text}");
            let printed = expected.to_string();
            assert_eq!(printed.parse::<Compression>(), Ok(expected), "{printed}");
        }
        assert_eq!(Compression::default().to_string(), "zstd:1");
        for (text, complaint) in [
            ("zstd:13", "zstd level 13 is not supported: use -7 to 12"),
            ("zstd:-8", "zstd level -8 is not supported"),
            ("zstd:0", "but not 0"),
            ("zstd:fast", "\"fast\" is not a zstd level"),
            (
                "lz4",
                "\"lz4\" is not a compression: use none, zstd or zstd:<level>",
            ),
            ("none:1", "is not a compression"),
            ("", "is not a compression"),
        ] {
            let error = text.parse::<Compression>().expect_err(text);
            assert!(error.contains(complaint), "{text}: {error}");
        }
    }

    #[test]
    fn headers_encode_and_decode() {
        assert_eq!(&Codec::Raw.header(), b"COFFER\x01\x00");
        assert_eq!(&Codec::Zstd.header(), b"COFFER\x01\x01");
        assert_eq!(Codec::from_header(b"COFFER\x01\x01"), Ok(Codec::Zstd));
        assert!(Codec::from_header(b"COFFER\x01").is_err());
        assert!(Codec::from_header(b"KOFFER\x01\x00").is_err());
        assert!(Codec::from_header(b"COFFER\x01\x07").is_err());
    }
}
