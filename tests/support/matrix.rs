//! What the generated matrices (tests/faults.rs, tests/security.rs) share: running their rows
//! side by side, and writing the table a document in docs/ is.

use std::fmt::Write as _;
use std::sync::Mutex;

/// Runs `check` over `rows` on two workers (the rows are independent instances, and most time
/// is spent waiting) while `beside` runs rows that share one resource (a container) one after
/// another on a thread of its own. Returns the results in order: `rows`' first, then `beside`'s.
pub fn run_rows<T: Sync, R: Send>(
    rows: &[T],
    check: impl Fn(&T) -> R + Sync,
    beside: impl FnOnce() -> Vec<R> + Send,
) -> Vec<R> {
    let next = Mutex::new(0usize);
    let done: Mutex<Vec<(usize, R)>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let results = beside();
            let mut done = done.lock().unwrap();
            done.extend(
                results
                    .into_iter()
                    .enumerate()
                    .map(|(n, result)| (rows.len() + n, result)),
            );
        });
        for _ in 0..2 {
            scope.spawn(|| loop {
                let index = {
                    let mut next = next.lock().unwrap();
                    let index = *next;
                    *next += 1;
                    index
                };
                let Some(row) = rows.get(index) else {
                    return;
                };
                let result = check(row);
                done.lock().unwrap().push((index, result));
            });
        }
    });
    let mut done = done.into_inner().unwrap();
    done.sort_by_key(|(index, _)| *index);
    done.into_iter().map(|(_, result)| result).collect()
}

/// A row of a generated table: its cells between `#` and *observed*, what was observed, and
/// whether that is what the row expected.
pub struct TableRow {
    pub cells: Vec<String>,
    pub observed: String,
    pub matched: bool,
}

/// Writes `intro` and then the table of `rows` (numbered; `columns` names the cells between `#`
/// and *observed*) to `path` in the repository, with a count of the rows as expected. Returns
/// the rows that were not, one line each, for the test's failure.
pub fn write_table(path: &str, intro: &str, columns: &[&str], rows: &[TableRow]) -> Vec<String> {
    let mut doc = format!(
        "{intro}| # | {} | observed |\n|---|{}---|\n",
        columns.join(" | "),
        "---|".repeat(columns.len())
    );
    for (index, row) in rows.iter().enumerate() {
        let mark = if row.matched { "ok" } else { "**MISMATCH**" };
        let cells: Vec<String> = row.cells.iter().map(|c| c.replace('|', "\\|")).collect();
        let _ = writeln!(
            doc,
            "| {} | {} | {mark}: {} |",
            index + 1,
            cells.join(" | "),
            row.observed.replace('|', "\\|"),
        );
    }
    let matched = rows.iter().filter(|row| row.matched).count();
    let _ = writeln!(doc, "\n{matched} of {} rows as expected.", rows.len());
    std::fs::write(crate::repository().join(path), &doc).unwrap();
    rows.iter()
        .enumerate()
        .filter(|(_, row)| !row.matched)
        .map(|(index, row)| format!("{}: {}: {}", index + 1, row.cells[0], row.observed))
        .collect()
}
