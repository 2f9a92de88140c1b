//! Parsers for the structured values flags take (`--node`, `--label`), used as clap value
//! parsers so a malformed value is a usage error naming its flag, before any network call.

use std::collections::HashMap;

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
}
