//! The naming rules of each storage kind, checked when a location is created or changed: a
//! value the storage itself would refuse, or one that would put Coffer's objects somewhere no
//! operator meant (the filesystem root, a path that climbs out of its folder, a bucket named
//! `../../`), is refused with the rule it breaks.

/// Folders an fs location may not be, nor be inside: the root and the kernel's pseudo
/// filesystems (writing probe objects there is at best an error, at worst damage).
const FORBIDDEN_FS_ROOTS: [&str; 3] = ["/proc", "/sys", "/dev"];

/// Why `value` is not an absolute, normalized folder path for an fs location.
pub(super) fn fs_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("{path:?} is not an absolute path"));
    }
    no_control_characters(path)?;
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        return Err("must not be the filesystem root '/'".into());
    }
    let parts: Vec<&str> = trimmed[1..].split('/').collect();
    if parts.iter().any(|part| part.is_empty()) {
        return Err(format!("{path:?} has an empty component ('//')"));
    }
    if parts.iter().any(|part| *part == ".." || *part == ".") {
        return Err("must not contain '.' or '..' components".into());
    }
    if let Some(root) = FORBIDDEN_FS_ROOTS
        .iter()
        .find(|root| trimmed == **root || trimmed.starts_with(&format!("{root}/")))
    {
        return Err(format!("must not be in {root}, a kernel filesystem"));
    }
    Ok(())
}

/// Why `bucket` is not an S3 bucket name: 3 to 63 lowercase letters, digits, '.' and '-',
/// starting and ending with a letter or digit, no '..', not an IP address (AWS's rules, which
/// S3-compatible servers follow).
pub(super) fn s3_bucket(bucket: &str) -> Result<(), String> {
    dns_like(bucket, 63, &['.', '-'])?;
    if bucket.contains("..") || bucket.contains(".-") || bucket.contains("-.") {
        return Err(format!("{bucket:?} has '..', '.-' or '-.'"));
    }
    if bucket.parse::<std::net::Ipv4Addr>().is_ok() {
        return Err(format!("{bucket:?} is an IP address"));
    }
    Ok(())
}

/// Why `bucket` is not a GCS bucket name: 3 to 63 lowercase letters, digits, '-', '_' and '.'
/// (up to 222 with dots), starting and ending with a letter or digit.
pub(super) fn gcs_bucket(bucket: &str) -> Result<(), String> {
    let longest = if bucket.contains('.') { 222 } else { 63 };
    dns_like(bucket, longest, &['.', '-', '_'])?;
    if bucket.contains("..") {
        return Err(format!("{bucket:?} has '..'"));
    }
    Ok(())
}

/// Why `container` is not an Azure Blob container name: 3 to 63 lowercase letters, digits and
/// single '-', starting and ending with a letter or digit.
pub(super) fn azure_container(container: &str) -> Result<(), String> {
    dns_like(container, 63, &['-'])?;
    if container.contains("--") {
        return Err(format!("{container:?} has '--'"));
    }
    Ok(())
}

/// Why `account` is not an Azure storage account name: 3 to 24 lowercase letters and digits.
pub(super) fn azure_account(account: &str) -> Result<(), String> {
    dns_like(account, 24, &[])
}

/// Why `region` is not a region name: letters, digits and '-' (`us-east-1`, `eu-central-2`).
pub(super) fn region(region: &str) -> Result<(), String> {
    if region.len() > 64
        || !region
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(format!(
            "{region:?} is not a region name (letters, digits and '-')"
        ));
    }
    Ok(())
}

/// Why `prefix` is not a key prefix inside a bucket or container: no '.' or '..' components, no
/// empty ones inside it, no control characters.
pub(super) fn prefix(prefix: &str) -> Result<(), String> {
    no_control_characters(prefix)?;
    let trimmed = prefix.trim_matches('/');
    if trimmed.is_empty() {
        return Ok(());
    }
    let parts: Vec<&str> = trimmed.split('/').collect();
    if parts.iter().any(|part| *part == ".." || *part == ".") {
        return Err("must not contain '.' or '..' components".into());
    }
    if parts.iter().any(|part| part.is_empty()) {
        return Err(format!("{prefix:?} has an empty component ('//')"));
    }
    Ok(())
}

/// Why `endpoint` is not an http:// or https:// URL with a host (and nothing after the path).
pub(super) fn endpoint(endpoint: &str) -> Result<(), String> {
    no_control_characters(endpoint)?;
    let rest = endpoint
        .strip_prefix("https://")
        .or_else(|| endpoint.strip_prefix("http://"))
        .ok_or_else(|| format!("{endpoint:?} is not an http:// or https:// URL"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    if host.is_empty() || host.starts_with(':') {
        return Err(format!("{endpoint:?} names no host"));
    }
    if authority.contains('@') {
        return Err(format!(
            "{endpoint:?} holds credentials: name them as secrets instead"
        ));
    }
    if rest.contains(['?', '#', ' ']) {
        return Err(format!("{endpoint:?} has a query, a fragment or a space"));
    }
    Ok(())
}

/// The shape bucket-like names share: `least..=most` characters, lowercase letters, digits and
/// `extra`, starting and ending with a letter or digit.
fn dns_like(name: &str, most: usize, extra: &[char]) -> Result<(), String> {
    let length = name.chars().count();
    if !(3..=most).contains(&length) {
        return Err(format!(
            "{name:?} is {length} characters long; it must be 3 to {most}"
        ));
    }
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || extra.contains(&c);
    if let Some(bad) = name.chars().find(|c| !allowed(*c)) {
        return Err(format!(
            "{name:?} has {bad:?}; allowed are lowercase letters, digits{}",
            extra.iter().map(|c| format!(", '{c}'")).collect::<String>()
        ));
    }
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !edge(name.chars().next()) || !edge(name.chars().last()) {
        return Err(format!(
            "{name:?} must start and end with a lowercase letter or digit"
        ));
    }
    Ok(())
}

fn no_control_characters(value: &str) -> Result<(), String> {
    if value.chars().any(char::is_control) {
        return Err("must not hold control characters (NUL, newlines, ...)".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fs_paths_must_be_absolute_normal_folders_off_the_root() {
        for good in ["/var/backups/coffer", "/mnt/nas/", "/a"] {
            assert_eq!(fs_path(good), Ok(()), "{good}");
        }
        for bad in [
            "/",
            "//",
            "relative/path",
            "",
            "/a/../b",
            "/a/./b",
            "/a//b",
            "/a\0b",
            "/a\nb",
            "/proc",
            "/sys/fs",
            "/dev/shm/x",
        ] {
            assert!(fs_path(bad).is_err(), "{bad:?}");
        }
        assert_eq!(fs_path("/devices"), Ok(()), "only /dev itself and below");
    }

    #[test]
    fn bucket_like_names_follow_their_kinds_rules() {
        assert_eq!(s3_bucket("coffer-backups.eu"), Ok(()));
        for bad in [
            "../../",
            "ab",
            "Coffer",
            "-coffer",
            "coffer-",
            "a..b",
            "a.-b",
            "192.168.1.1",
            &"x".repeat(64),
            "co_ffer",
        ] {
            assert!(s3_bucket(bad).is_err(), "{bad:?}");
        }
        assert_eq!(gcs_bucket("my_bucket.example.com"), Ok(()));
        assert!(gcs_bucket("_bucket").is_err());
        assert_eq!(azure_container("coffer-1"), Ok(()));
        assert!(azure_container("coffer--1").is_err());
        assert!(azure_container("Coffer").is_err());
        assert_eq!(azure_account("devstoreaccount1"), Ok(()));
        assert!(azure_account("dev-store").is_err());
        assert!(azure_account(&"a".repeat(25)).is_err());
    }

    #[test]
    fn prefixes_regions_and_endpoints() {
        assert_eq!(prefix(""), Ok(()));
        assert_eq!(prefix("/team/a/"), Ok(()));
        assert!(prefix("a/../b").is_err());
        assert!(prefix("a//b").is_err());
        assert!(prefix("a\0").is_err());
        assert_eq!(region("eu-central-2"), Ok(()));
        assert!(region("eu central").is_err());
        assert_eq!(endpoint("http://127.0.0.1:8333"), Ok(()));
        assert_eq!(endpoint("https://s3.example.com/base"), Ok(()));
        for bad in [
            "ftp://x",
            "http://",
            "http://:80",
            "https://user:pw@host",
            "http://h?x=1",
            "http://h\n",
        ] {
            assert!(endpoint(bad).is_err(), "{bad:?}");
        }
    }
}
