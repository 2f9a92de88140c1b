//! Parsers for the structured values flags take (`--node`, `--label`, `--rate-limit`, `--since`,
//! paths and variable names), used as clap value parsers so a malformed value is a usage error
//! naming its flag, before any network call.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use coffer_client::proto;

use crate::cli::CliError;

/// Parses a node spec `ADDR[,dc=DC][,rack=RACK]` (`datacenter=` is accepted for `dc=`).
///
/// The address itself is checked by the server, which normalizes it; here it only has to be
/// present. Fails on an empty part, an unknown or repeated key, or an empty value.
pub fn parse_node_spec(text: &str) -> Result<proto::NodeSpec, String> {
    let mut parts = text.split(',');
    let address = parts.next().unwrap_or_default();
    if address.is_empty() {
        return Err("missing the agent address (expected ADDR[,dc=DC][,rack=RACK])".to_owned());
    }
    if address.contains('=') {
        return Err(format!(
            "{address:?} is not an address: the spec starts with the agent address, \
             as in 10.0.0.1:7070,dc=dc1"
        ));
    }
    let mut spec = proto::NodeSpec {
        address: address.to_owned(),
        ..Default::default()
    };
    let mut seen_datacenter = false;
    let mut seen_rack = false;
    for part in parts {
        let Some((key, value)) = part.split_once('=') else {
            return Err(format!("{part:?} is not KEY=VALUE (keys: dc, rack)"));
        };
        if value.is_empty() {
            return Err(format!("{key}= needs a value"));
        }
        let (seen, field) = match key {
            "dc" | "datacenter" => (&mut seen_datacenter, &mut spec.datacenter),
            "rack" => (&mut seen_rack, &mut spec.rack),
            _ => return Err(format!("unknown key {key:?} (keys: dc, rack)")),
        };
        if *seen {
            return Err(format!("{key} is given twice"));
        }
        *seen = true;
        value.clone_into(field);
    }
    Ok(spec)
}

/// Parses a location's compression: `none`, `zstd` (level 1) or `zstd:LEVEL`. The level's range
/// is the server's to check (it names the allowed levels).
pub fn parse_compression(text: &str) -> Result<proto::Compression, String> {
    let (codec, level) = match text.split_once(':') {
        None if text == "none" => (proto::CompressionCodec::None, 0),
        None if text == "zstd" => (proto::CompressionCodec::Zstd, 1),
        Some(("zstd", level)) => (
            proto::CompressionCodec::Zstd,
            level
                .parse::<i32>()
                .map_err(|_| format!("{level:?} is not a zstd level (a whole number)"))?,
        ),
        _ => return Err("use none, zstd or zstd:LEVEL (LEVEL from -7 to 12)".to_owned()),
    };
    Ok(proto::Compression {
        codec: codec.into(),
        level,
    })
}

/// A `KEY=VALUE` label from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    pub key: String,
    pub value: String,
}

/// Parses `KEY=VALUE`. The value may be empty; the key may not. Naming rules are the server's.
pub fn parse_label(text: &str) -> Result<Label, String> {
    let Some((key, value)) = text.split_once('=') else {
        return Err(format!("{text:?} is not KEY=VALUE"));
    };
    if key.is_empty() {
        return Err(format!("{text:?} has an empty key"));
    }
    Ok(Label {
        key: key.to_owned(),
        value: value.to_owned(),
    })
}

/// Parses a bare label key, as `--remove-label` takes, refusing `KEY=VALUE` by mistake.
pub fn parse_label_key(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Err("the label key is empty".to_owned());
    }
    if text.contains('=') {
        return Err(format!("{text:?} is KEY=VALUE; give only the key"));
    }
    Ok(text.to_owned())
}

/// Collects labels into the request's map. `flag` names the option in the error.
///
/// Fails when one key is given twice with different values; the same pair twice is harmless.
pub fn labels_to_map(labels: Vec<Label>, flag: &str) -> Result<HashMap<String, String>, CliError> {
    let mut map = HashMap::with_capacity(labels.len());
    for Label { key, value } in labels {
        if let Some(previous) = map.get(&key)
            && previous != &value
        {
            return Err(CliError::Usage(format!(
                "{flag}: key {key:?} is given twice ({previous:?} and {value:?})"
            )));
        }
        map.insert(key, value);
    }
    Ok(map)
}

/// Parses a byte count or a rate in bytes per second: `1000`, `64K`, `1.5GiB`, `50MiB/s`,
/// `10MB/s`.
///
/// A bare prefix letter and the `i` forms are powers of 1024 (`1G` = `1GiB` = 2^30 bytes), the
/// `B` forms powers of 1000 (`1GB` = 10^9 bytes), as `dd` reads them; the letter's case does not
/// matter. A trailing `/s` is allowed, and a fraction is rounded to the nearest byte. Fails on a
/// negative or malformed number, an unknown unit, a lowercase `b` (bits, which a byte limit
/// cannot mean) and values beyond `i64::MAX`.
pub fn parse_byte_rate(text: &str) -> Result<i64, String> {
    const EXPECTED: &str = "expected bytes such as 1000, 64K, 1.5GiB or 50MiB/s";
    let trimmed = text.trim();
    let amount = trimmed.strip_suffix("/s").unwrap_or(trimmed).trim_end();
    let split = amount
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(amount.len());
    let (number, unit) = amount.split_at(split);
    let unit = unit.trim_start();
    if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
        return Err(EXPECTED.to_owned());
    }
    let multiplier = byte_unit(unit)?;
    let too_large = || format!("more than {} bytes", i64::MAX);
    let bytes = if number.contains('.') {
        let value: f64 = number.parse().map_err(|_| EXPECTED.to_owned())?;
        let bytes = (value * multiplier as f64).round();
        // i64::MAX is not exact in f64: 2^63 is the first value that does not fit.
        if bytes >= 9_223_372_036_854_775_808.0 {
            return Err(too_large());
        }
        bytes as i64
    } else {
        let value: i64 = number.parse().map_err(|_| too_large())?;
        value.checked_mul(multiplier).ok_or_else(too_large)?
    };
    Ok(bytes)
}

/// The multiplier of a byte unit as [`parse_byte_rate`] reads it.
fn byte_unit(unit: &str) -> Result<i64, String> {
    const PREFIXES: &str = "kmgtpe";
    if unit.is_empty() || unit == "B" {
        return Ok(1);
    }
    let mut chars = unit.chars();
    let prefix = chars.next().unwrap_or_default();
    let rest = chars.as_str();
    let Some(power) = PREFIXES.find(prefix.to_ascii_lowercase()) else {
        return Err(if unit == "b" {
            "b means bits: write B for bytes".to_owned()
        } else {
            format!("unknown unit {unit:?} (use B, K, M, G, T, KiB, MB, ...)")
        });
    };
    let power = u32::try_from(power + 1).unwrap_or(u32::MAX);
    let base: i64 = match rest {
        "" | "i" | "iB" => 1024,
        "B" => 1000,
        "b" | "ib" => {
            return Err(format!(
                "{unit:?} means bits: write {prefix}B or {prefix}iB"
            ));
        }
        _ => {
            return Err(format!(
                "unknown unit {unit:?} (use B, K, M, G, T, KiB, MB, ...)"
            ));
        }
    };
    base.checked_pow(power)
        .ok_or_else(|| format!("unit {unit:?} is too large"))
}

/// Parses a point in time: RFC 3339 with `Z` or a `+HH:MM`/`-HH:MM` offset
/// (`2025-11-21T22:50:00Z`, `2025-11-21T23:50:00.5+01:00`), or a date alone (`2025-11-21`),
/// which means its midnight in UTC.
///
/// Fails on anything else, and on times before 1970 or after 9999.
pub fn parse_timestamp(text: &str) -> Result<prost_types::Timestamp, String> {
    const EXPECTED: &str =
        "expected RFC 3339 such as 2025-11-21T22:50:00Z or 2025-11-21T23:50:00+01:00, or a date";
    let invalid = || EXPECTED.to_owned();
    let trimmed = text.trim();
    let time = if trimmed.len() == 10 && !trimmed.contains('T') {
        humantime::parse_rfc3339(&format!("{trimmed}T00:00:00Z")).map_err(|_| invalid())?
    } else if let Some(utc) = trimmed.strip_suffix(['Z', 'z']) {
        humantime::parse_rfc3339(&format!("{utc}Z")).map_err(|_| invalid())?
    } else {
        let (local, offset) = split_utc_offset(trimmed).ok_or_else(invalid)?;
        let local = humantime::parse_rfc3339(&format!("{local}Z")).map_err(|_| invalid())?;
        let shifted = if offset >= 0 {
            local.checked_sub(Duration::from_secs(offset.unsigned_abs()))
        } else {
            local.checked_add(Duration::from_secs(offset.unsigned_abs()))
        };
        shifted
            .filter(|time| *time >= SystemTime::UNIX_EPOCH)
            .ok_or_else(|| "before 1970".to_owned())?
    };
    Ok(prost_types::Timestamp::from(time))
}

/// Splits `...+HH:MM` into the local time and the offset east of UTC in seconds.
fn split_utc_offset(text: &str) -> Option<(&str, i64)> {
    let split = text.len().checked_sub(6)?;
    let (local, offset) = (text.get(..split)?, text.get(split..)?);
    let sign = match offset.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let (hours, minutes) = offset.get(1..)?.split_once(':')?;
    if hours.len() != 2 || minutes.len() != 2 {
        return None;
    }
    let hours: i64 = hours.parse().ok().filter(|hours| *hours < 24)?;
    let minutes: i64 = minutes.parse().ok().filter(|minutes| *minutes < 60)?;
    Some((local, sign * (hours * 3_600 + minutes * 60)))
}

/// Parses an absolute path, as the paths on the agents' hosts must be (a relative path would be
/// resolved against whatever directory each agent runs in).
pub fn parse_absolute_path(text: &str) -> Result<String, String> {
    if text.starts_with('/') {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "{text:?} is not an absolute path (it names a path on the agents' hosts)"
        ))
    }
}

/// Parses the name of an environment variable: ASCII letters, digits and `_`, not starting with a
/// digit. Refusing anything else also catches a secret pasted where its variable's name belongs.
pub fn parse_env_var_name(text: &str) -> Result<String, String> {
    let valid = text
        .chars()
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
        && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Ok(text.to_owned())
    } else {
        Err(
            "not an environment variable name (ASCII letters, digits and _, not starting with a \
             digit): give the name of the agent's variable that holds the secret, never the secret"
                .to_owned(),
        )
    }
}

/// The clap value parser of [`parse_env_var_name`]. Unlike clap's own errors, its error does not
/// repeat a rejected value: that may be a secret pasted by mistake, and stderr may end in a log.
#[derive(Debug, Clone, Copy)]
pub struct EnvVarNameParser;

impl clap::builder::TypedValueParser for EnvVarNameParser {
    type Value = String;

    fn parse_ref(
        &self,
        command: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<String, clap::Error> {
        parse_env_var_name(value.to_str().unwrap_or_default()).map_err(|reason| {
            let flag = arg.map_or_else(|| "the value".to_owned(), |arg| format!("'{arg}'"));
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("invalid value for {flag}: {reason}\n"),
            )
            .with_cmd(command)
        })
    }
}

/// Parses an idempotency key: 1 to 128 characters.
pub fn parse_idempotency_key(text: &str) -> Result<String, String> {
    match text.chars().count() {
        0 => Err("the idempotency key is empty".to_owned()),
        1..=128 => Ok(text.to_owned()),
        length => Err(format!(
            "the idempotency key has {length} characters; at most 128 are allowed"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_spec_with_address_only() {
        let spec = parse_node_spec("10.0.0.1:7070").expect("valid spec");
        assert_eq!(spec.address, "10.0.0.1:7070");
        assert_eq!(spec.datacenter, "");
        assert_eq!(spec.rack, "");
    }

    #[test]
    fn node_spec_with_datacenter_and_rack_in_any_order() {
        let spec = parse_node_spec("http://db1:7070,rack=r2,dc=eu-west").expect("valid spec");
        assert_eq!(spec.address, "http://db1:7070");
        assert_eq!(spec.datacenter, "eu-west");
        assert_eq!(spec.rack, "r2");
        let spec = parse_node_spec("db1:7070,datacenter=dc1").expect("valid spec");
        assert_eq!(spec.datacenter, "dc1");
    }

    #[test]
    fn node_spec_errors() {
        for bad in [
            "",
            ",dc=dc1",
            "dc=dc1",
            "db1:7070,dc",
            "db1:7070,dc=",
            "db1:7070,zone=z1",
            "db1:7070,dc=a,dc=b",
            "db1:7070,dc=a,datacenter=b",
            "db1:7070,",
        ] {
            assert!(parse_node_spec(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn label_parsing() {
        assert_eq!(
            parse_label("env=prod"),
            Ok(Label {
                key: "env".to_owned(),
                value: "prod".to_owned()
            })
        );
        // Only the first `=` separates: values may contain `=`.
        assert_eq!(
            parse_label("query=a=b").map(|label| label.value),
            Ok("a=b".to_owned())
        );
        assert_eq!(
            parse_label("empty=").map(|label| label.value),
            Ok(String::new())
        );
        assert!(parse_label("env").is_err());
        assert!(parse_label("=prod").is_err());
    }

    #[test]
    fn label_key_parsing() {
        assert_eq!(parse_label_key("env"), Ok("env".to_owned()));
        assert!(parse_label_key("").is_err());
        assert!(parse_label_key("env=prod").is_err());
    }

    #[test]
    fn duplicate_label_keys_are_a_usage_error_unless_equal() {
        let label = |key: &str, value: &str| Label {
            key: key.to_owned(),
            value: value.to_owned(),
        };
        let map = labels_to_map(
            vec![label("a", "1"), label("a", "1"), label("b", "2")],
            "--label",
        )
        .expect("same pair twice is fine");
        assert_eq!(map.len(), 2);
        let error = labels_to_map(vec![label("a", "1"), label("a", "2")], "--label")
            .expect_err("conflicting values");
        assert!(matches!(error, CliError::Usage(message) if message.starts_with("--label:")));
    }

    #[test]
    fn byte_rates_in_binary_and_decimal_units() {
        let cases = [
            ("1000", 1000),
            ("0", 0),
            ("1000B", 1000),
            ("1000 B/s", 1000),
            ("64K", 64 << 10),
            ("64k", 64 << 10),
            ("1G", 1 << 30),
            ("1GiB", 1 << 30),
            ("1Gi", 1 << 30),
            ("1GB", 1_000_000_000),
            ("50MiB/s", 50 << 20),
            ("50 MiB/s", 50 << 20),
            ("10MB/s", 10_000_000),
            ("1.5GiB", 3 << 29),
            ("0.5K", 512),
            ("2T", 2 << 40),
            ("7E", 7 << 60),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_byte_rate(text), Ok(expected), "{text:?}");
        }
    }

    #[test]
    fn compressions_become_the_api_message() {
        let zstd = |level| proto::Compression {
            codec: proto::CompressionCodec::Zstd.into(),
            level,
        };
        assert_eq!(parse_compression("zstd"), Ok(zstd(1)));
        assert_eq!(parse_compression("zstd:-7"), Ok(zstd(-7)));
        assert_eq!(
            parse_compression("zstd:40"),
            Ok(zstd(40)),
            "the server checks the range"
        );
        assert_eq!(
            parse_compression("none"),
            Ok(proto::Compression {
                codec: proto::CompressionCodec::None.into(),
                level: 0,
            })
        );
        for bad in ["lz4", "none:1", "zstd:", "zstd:fast", "ZSTD", ""] {
            assert!(parse_compression(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn byte_rate_errors() {
        for bad in [
            "",
            "-1",
            "abc",
            "MiB",
            ".5M",
            "5.M",
            "1.2.3M",
            "10Mb/s",
            "10mib",
            "10b",
            "10X",
            "10KiBs",
            "8E",
            "9223372036854775808",
            "1/s/s",
        ] {
            assert!(parse_byte_rate(bad).is_err(), "{bad:?} should be rejected");
        }
        assert_eq!(parse_byte_rate("9223372036854775807"), Ok(i64::MAX));
        assert!(
            parse_byte_rate("10Mb/s")
                .expect_err("bits")
                .contains("bits")
        );
    }

    #[test]
    fn timestamps_in_utc_with_offsets_and_dates() {
        let seconds = |text| parse_timestamp(text).map(|timestamp| timestamp.seconds);
        assert_eq!(seconds("2023-11-14T22:13:20Z"), Ok(1_700_000_000));
        assert_eq!(seconds("2023-11-14T22:13:20z"), Ok(1_700_000_000));
        assert_eq!(seconds("2023-11-14T23:13:20+01:00"), Ok(1_700_000_000));
        assert_eq!(seconds("2023-11-14T17:43:20-04:30"), Ok(1_700_000_000));
        assert_eq!(seconds("2023-11-14"), Ok(1_699_920_000));
        assert_eq!(
            parse_timestamp("2023-11-14T22:13:20.250Z").map(|timestamp| timestamp.nanos),
            Ok(250_000_000)
        );
        for bad in [
            "",
            "yesterday",
            "2023-11-14T22:13:20",
            "2023-11-14T22:13:20+0100",
            "2023-11-14T22:13:20+25:00",
            "2023-13-01",
            "1970-01-01T00:30:00+01:00",
            "1700000000",
        ] {
            assert!(parse_timestamp(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn paths_variable_names_and_idempotency_keys() {
        assert_eq!(
            parse_absolute_path("/mnt/backups"),
            Ok("/mnt/backups".to_owned())
        );
        assert!(parse_absolute_path("backups").is_err());
        assert!(parse_absolute_path("").is_err());

        for good in ["AWS_SECRET_ACCESS_KEY", "_X", "a1"] {
            assert_eq!(parse_env_var_name(good), Ok(good.to_owned()));
        }
        for bad in ["", "1X", "A-B", "wJalrXUtnFEMI/K7MDENG+bPxRfiCY", "A B"] {
            let error = parse_env_var_name(bad).expect_err("not a name");
            // The value may be a secret pasted by mistake: the message never repeats it.
            assert!(bad.is_empty() || !error.contains(bad), "{error}");
        }

        assert_eq!(parse_idempotency_key("k-1"), Ok("k-1".to_owned()));
        assert!(parse_idempotency_key("").is_err());
        assert!(parse_idempotency_key(&"k".repeat(128)).is_ok());
        assert!(parse_idempotency_key(&"k".repeat(129)).is_err());
    }
}
