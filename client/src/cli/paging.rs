//! Following `next_page_token` through every page of a `List*` call, and the `--page-size` and
//! `--page-token` flags that ask for one page instead.

use std::collections::HashSet;
use std::future::Future;

use clap::Args;

use crate::cli::CliError;

/// `--page-size` and `--page-token`: without them a list command fetches every page.
#[derive(Debug, Clone, Default, Args)]
pub struct PageArgs {
    /// Fetch one page of at most N items.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(1..))]
    pub page_size: Option<i32>,
    /// Fetch the page this token (printed by a previous --page-size call) starts.
    #[arg(long, value_name = "TOKEN")]
    pub page_token: Option<String>,
}

/// Fetches the one page `pages` asks for, or every page when it asks for none.
///
/// `fetch_page` gets the page size (0 for the server's default) and the page token. Fails as
/// [`all_pages`] does.
pub async fn fetch_pages<T, F, Fut>(pages: PageArgs, mut fetch_page: F) -> Result<Page<T>, CliError>
where
    F: FnMut(i32, String) -> Fut,
    Fut: Future<Output = Result<Page<T>, CliError>>,
{
    if pages.page_size.is_some() || pages.page_token.is_some() {
        fetch_page(
            pages.page_size.unwrap_or(0),
            pages.page_token.unwrap_or_default(),
        )
        .await
    } else {
        let items = all_pages(|page_token| fetch_page(0, page_token)).await?;
        Ok(Page {
            items,
            next_page_token: String::new(),
        })
    }
}

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

    #[tokio::test]
    async fn page_flags_fetch_one_page_with_their_size_and_token() {
        let mut requested = Vec::new();
        let page = fetch_pages(
            PageArgs {
                page_size: Some(2),
                page_token: Some("b".to_owned()),
            },
            |size, token| {
                requested.push((size, token));
                async {
                    Ok(Page {
                        items: vec![1, 2],
                        next_page_token: "c".to_owned(),
                    })
                }
            },
        )
        .await
        .expect("one page");
        assert_eq!(page.items, vec![1, 2]);
        assert_eq!(page.next_page_token, "c");
        assert_eq!(requested, vec![(2, "b".to_owned())]);

        let mut requested = Vec::new();
        let page = fetch_pages(PageArgs::default(), |size, token| {
            requested.push((size, token.clone()));
            async move {
                Ok(Page {
                    items: vec![token.len()],
                    next_page_token: if token.is_empty() {
                        "x".to_owned()
                    } else {
                        String::new()
                    },
                })
            }
        })
        .await
        .expect("every page");
        assert_eq!(page.items, vec![0, 1]);
        assert!(page.next_page_token.is_empty());
        assert_eq!(requested, vec![(0, String::new()), (0, "x".to_owned())]);
    }
}
