//! Listing pages: how many items (`limit`) and in which order (`sort_order`), checked the
//! same way for every listing, whether they come in a query string or a JSON body.

use std::collections::HashMap;

use super::error::ApiError;
use crate::store::SortOrder;

/// Items per page when the request does not say.
const DEFAULT_PAGE: i64 = 50;
/// Most items per page.
const MAX_PAGE: i64 = 1000;

/// `limit` checked: `None` means the default.
pub fn limit(requested: Option<i64>) -> Result<u32, ApiError> {
    let limit = requested.unwrap_or(DEFAULT_PAGE);
    (1..=MAX_PAGE)
        .contains(&limit)
        .then(|| u32::try_from(limit).ok())
        .flatten()
        .ok_or_else(|| {
            ApiError::bad_field("limit", format!("limit must be between 1 and {MAX_PAGE}"))
        })
}

/// `limit` and `sort_order` from a query string (newest first unless `ascending`).
pub fn from_query(query: &HashMap<String, String>) -> Result<(u32, SortOrder), ApiError> {
    // Not a number at all: out of range, with the same message.
    let requested = query.get("limit").map(|l| l.parse::<i64>().unwrap_or(0));
    let sort_order = match query.get("sort_order").map(String::as_str) {
        None | Some("descending") => SortOrder::Descending,
        Some("ascending") => SortOrder::Ascending,
        Some(_) => {
            return Err(ApiError::bad_field(
                "sort_order",
                "sort_order must be ascending or descending",
            ))
        }
    };
    Ok((limit(requested)?, sort_order))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn limits_and_orders() {
        assert_eq!(
            from_query(&query(&[])).unwrap(),
            (50, SortOrder::Descending)
        );
        assert_eq!(
            from_query(&query(&[("limit", "1000"), ("sort_order", "ascending")])).unwrap(),
            (1000, SortOrder::Ascending)
        );
        for bad in ["0", "1001", "-1", "ten", ""] {
            assert!(from_query(&query(&[("limit", bad)])).is_err(), "{bad}");
        }
        assert!(from_query(&query(&[("sort_order", "up")])).is_err());
        assert_eq!(limit(Some(7)).unwrap(), 7);
        assert!(limit(Some(i64::MAX)).is_err());
    }
}
