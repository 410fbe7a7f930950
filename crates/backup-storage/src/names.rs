//! Object names and upload temporary names, shared by the file-like backends.
use crate::{Error, Result};

/// Whether an object name is relative, `/`-separated, without empty, `.` or
/// `..` segments, backslashes, line breaks (which would end an FTP command)
/// or NUL, and not the name of an upload's temporary file.
pub(crate) fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.contains(['\0', '\\', '\r', '\n'])
        && name.split('/').all(is_valid_segment)
}

/// One segment of a valid name.
pub(crate) fn is_valid_segment(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !is_temp_name(s)
}

/// A list prefix as the directory that can hold its matches and the start
/// of their names within it: "site/gw-" lists entries of "site/" starting
/// with "gw-". `None` when the directory part is not itself a valid name
/// ("../", "/abs", "a//"): no valid name lies below it, and refusing to walk
/// it also keeps a listing inside the backend's root.
pub(crate) fn split_list_prefix(prefix: &str) -> Option<(&str, &str)> {
    let (dir, file_prefix) = match prefix.rfind('/') {
        Some(i) => prefix.split_at(i + 1),
        None => ("", prefix),
    };
    (dir.is_empty() || is_valid_name(&dir[..dir.len() - 1])).then_some((dir, file_prefix))
}

/// Temporary files of unfinished uploads: `.<basename>.partial-<hex>`.
pub(crate) fn is_temp_name(file_name: &str) -> bool {
    file_name.starts_with('.') && file_name.contains(".partial-")
}

/// A fresh temporary file name beside `base`.
pub(crate) fn temp_name(base: &str) -> Result<String> {
    let mut random = [0u8; 8];
    getrandom::getrandom(&mut random).map_err(|e| Error::Other {
        what: format!("drawing a random temporary file name: {e}"),
        source: None,
    })?;
    // Keep room for the decoration within NAME_MAX (255 bytes).
    let mut end = base.len().min(200);
    while !base.is_char_boundary(end) {
        end -= 1;
    }
    Ok(format!(
        ".{}.partial-{:016x}",
        &base[..end],
        u64::from_ne_bytes(random)
    ))
}
