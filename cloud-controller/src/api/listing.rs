//! One page of a list endpoint: `IN (...)` filters from the query string, the total, the rows
//! in creation order, and the query string the pagination links carry.

use sqlx::any::AnyRow;

use super::{encode_query, PageQuery};
use crate::error::ApiResult;
use crate::state::AppState;

/// A filter of a list: `sql` with `{}` where the placeholders go (`name IN ({})`), the query
/// parameter it came from (empty: not repeated in links), and its values (none: no filter).
pub struct Filter<'a> {
    pub sql: &'a str,
    pub param: &'a str,
    pub values: Vec<String>,
}

/// A page of rows.
pub struct Page<T> {
    /// Rows matching the filters, all pages.
    pub total: i64,
    /// This page's rows.
    pub rows: Vec<T>,
    /// `param=v1,v2&...` of the filters, for the links.
    pub query: String,
}

/// `SELECT {columns} FROM {from}` with `filters`, ordered by `order`, one page of `paging`.
pub async fn page<T>(
    s: &AppState,
    columns: &str,
    from: &str,
    order: &str,
    filters: &[Filter<'_>],
    paging: &PageQuery,
) -> ApiResult<Page<T>>
where
    T: for<'r> sqlx::FromRow<'r, AnyRow> + Send + Unpin,
{
    let (limit, offset) = paging.limits()?;
    let mut clause = String::from(" WHERE 1 = 1");
    let mut query = Vec::new();
    let mut values = Vec::new();
    for f in filters.iter().filter(|f| !f.values.is_empty()) {
        clause.push_str(" AND ");
        let first = values.len() + 1;
        let marks: Vec<String> = (first..first + f.values.len())
            .map(|n| format!("${n}"))
            .collect();
        clause.push_str(&f.sql.replace("{}", &marks.join(", ")));
        if !f.param.is_empty() {
            query.push(format!("{}={}", f.param, encode_query(&f.values.join(","))));
        }
        values.extend(f.values.iter().cloned());
    }
    let mut count = sqlx::query_as::<_, (i64,)>(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM {from}{clause}"
    )));
    for v in &values {
        count = count.bind(v.clone());
    }
    let total = count.fetch_one(&s.db).await?.0;
    let mut rows = sqlx::query_as::<_, T>(sqlx::AssertSqlSafe(format!(
        "SELECT {columns} FROM {from}{clause} ORDER BY {order} LIMIT ${} OFFSET ${}",
        values.len() + 1,
        values.len() + 2
    )));
    for v in &values {
        rows = rows.bind(v.clone());
    }
    let rows = rows.bind(limit).bind(offset).fetch_all(&s.db).await?;
    Ok(Page {
        total,
        rows,
        query: query.join("&"),
    })
}
