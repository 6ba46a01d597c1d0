//! AIP-158 pagination: page sizes and opaque page tokens bound to the query
//! that issued them.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use crate::ApiError;

/// Page size when the caller sends 0.
pub const DEFAULT_PAGE_SIZE: u64 = 50;
/// Larger page sizes are coerced to this.
pub const MAX_PAGE_SIZE: u64 = 500;

/// A decoded page request: how many rows, and after which key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub size: u64,
    /// The sort key of the last row of the previous page, if any.
    pub after: Option<String>,
    query: u64,
}

impl Page {
    /// Decodes `page_size` and `page_token` for a query whose filters are
    /// described by `query` (any stable text: a token from another query is
    /// refused).
    pub fn parse(page_size: i32, page_token: &str, query: &str) -> Result<Page, ApiError> {
        let size = match page_size {
            n if n < 0 => {
                return Err(ApiError::invalid(
                    "page_size",
                    format!("must not be negative (got {n})"),
                ))
            }
            0 => DEFAULT_PAGE_SIZE,
            n => (n as u64).min(MAX_PAGE_SIZE),
        };
        let query = fingerprint(query);
        let after = if page_token.is_empty() {
            None
        } else {
            let bad = || {
                ApiError::invalid(
                    "page_token",
                    "is not a page token issued for this query; start again without one",
                )
            };
            let raw = URL_SAFE_NO_PAD.decode(page_token).map_err(|_| bad())?;
            let text = String::from_utf8(raw).map_err(|_| bad())?;
            let (q, key) = text.split_once(':').ok_or_else(bad)?;
            if q.parse::<u64>().map_err(|_| bad())? != query || key.is_empty() {
                return Err(bad());
            }
            Some(key.to_string())
        };
        Ok(Page { size, after, query })
    }

    /// How many rows to fetch: one more than the page, to know whether
    /// another page follows.
    pub fn fetch_limit(&self) -> u64 {
        self.size + 1
    }

    /// Trims `rows` to the page and returns the next page token (empty on
    /// the last page). `key` gives a row's sort key.
    pub fn finish<T>(&self, mut rows: Vec<T>, key: impl Fn(&T) -> String) -> (Vec<T>, String) {
        if rows.len() as u64 > self.size {
            rows.truncate(self.size as usize);
            let token = rows
                .last()
                .map(|last| URL_SAFE_NO_PAD.encode(format!("{}:{}", self.query, key(last))))
                .unwrap_or_default();
            (rows, token)
        } else {
            (rows, String::new())
        }
    }
}

/// FNV-1a: stable across releases and platforms, unlike std's hasher.
fn fingerprint(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tokens round-trip for their query and are refused for another.
    #[test]
    fn tokens_are_bound_to_their_query() {
        let page = Page::parse(2, "", "state=ACTIVE").expect("first page");
        let (rows, token) = page.finish(vec!["a", "b", "c"], |r| r.to_string());
        assert_eq!(rows, vec!["a", "b"]);
        let next = Page::parse(2, &token, "state=ACTIVE").expect("next page");
        assert_eq!(next.after.as_deref(), Some("b"));
        assert!(Page::parse(2, &token, "state=DRAFT").is_err());
        assert!(Page::parse(2, "garbage!", "state=ACTIVE").is_err());
        assert!(Page::parse(-1, "", "").is_err());
        assert_eq!(Page::parse(10_000, "", "").expect("coerced").size, MAX_PAGE_SIZE);
        let (_, last) = Page::parse(5, "", "q")
            .expect("page")
            .finish(vec![1, 2], |r| r.to_string());
        assert!(last.is_empty());
    }
}
