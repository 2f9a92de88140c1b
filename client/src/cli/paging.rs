//! Following `next_page_token` through every page of a `List*` call.

use std::collections::HashSet;
use std::future::Future;

use crate::cli::CliError;

/// One page of a list response.
#[derive(Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Empty on the last page.
    pub next_page_token: String,
}

/// Calls `fetch_page` with an empty token, then with each `next_page_token`, until a page says
/// it is the last, and returns every item in order.
///
/// Fails with the first failing page's error, or with [`CliError::Protocol`] if the server hands
/// out a token it already gave (which would otherwise loop forever).
pub async fn all_pages<T, F, Fut>(mut fetch_page: F) -> Result<Vec<T>, CliError>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<Page<T>, CliError>>,
{
    let mut items = Vec::new();
    let mut seen_tokens = HashSet::new();
    let mut page_token = String::new();
    loop {
        let page = fetch_page(page_token).await?;
        items.extend(page.items);
        if page.next_page_token.is_empty() {
            return Ok(items);
        }
        if !seen_tokens.insert(page.next_page_token.clone()) {
            return Err(CliError::Protocol(format!(
                "page token {:?} was returned twice",
                page.next_page_token
            )));
        }
        page_token = page.next_page_token;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn follows_tokens_until_the_last_page() {
        let mut requested = Vec::new();
        let items = all_pages(|token: String| {
            requested.push(token.clone());
            async move {
                Ok(match token.as_str() {
                    "" => Page {
                        items: vec![1, 2],
                        next_page_token: "b".to_owned(),
                    },
                    "b" => Page {
                        items: vec![3],
                        next_page_token: "c".to_owned(),
                    },
                    _ => Page {
                        items: vec![],
                        next_page_token: String::new(),
                    },
                })
            }
        })
        .await
        .expect("three pages");
        assert_eq!(items, vec![1, 2, 3]);
        assert_eq!(requested, vec!["", "b", "c"]);
    }

    #[tokio::test]
    async fn a_repeated_token_is_an_error_not_a_loop() {
        let result = all_pages(|_token| async {
            Ok(Page {
                items: vec![1],
                next_page_token: "same".to_owned(),
            })
        })
        .await;
        assert!(matches!(result, Err(CliError::Protocol(_))));
    }
}
