//! The seed `bootagent prepare` baked into the image: whether a first checkout would start from
//! it, and how far the remote has moved on since it was taken. Local: the remote's commit comes
//! from the git check's listing.

use std::time::Duration;

use super::{ok, skip, warn, Finding};
use crate::git::{self, seed, RemoteRef};
use crate::plan::{fetch_depth, Plan};

const AGAIN: &str = "run `bootagent prepare` again in the image build; without a seed a first \
                     boot fetches the whole ref";

/// `listed`: what the git check found the remote's ref at, when it could list it.
pub(super) fn check_seed(plan: &Plan, listed: Option<RemoteRef>) -> Finding {
    let git = &plan.git;
    let record = match seed::read(&git.seed) {
        Ok(Some(record)) => record,
        Ok(None) => {
            return skip(format!(
                "no seed in {} (`bootagent prepare` bakes one into an image)",
                git.seed.display()
            ))
        }
        Err(why) => return warn(format!("the seed is not used: {why}"), AGAIN),
    };
    let Ok(remote) = &git.remote else {
        return skip("no git repository configured (see git)");
    };
    let shallow = fetch_depth(remote, git.depth, git.trust.allow_rewind).is_some();
    if let Err(why) = record.fits(remote, &git.mirrors, shallow) {
        return warn(format!("a first checkout would not use it: {why}"), AGAIN);
    }
    let age = record.age().map_or_else(
        || "its time unknown".to_string(),
        |age| humantime::format_duration(Duration::from_secs(age.as_secs())).to_string() + " old",
    );
    let taken = format!("taken {} ({age})", record.taken_at);
    let Some(held) = record.commit_of(&git.reference) else {
        let held: Vec<_> = record.refs.keys().map(String::as_str).collect();
        return warn(
            format!(
                "{taken}, holds {}, not {}: a first boot fetches all of {} but what they share",
                held.join(", "),
                git.reference,
                git.reference
            ),
            format!(
                "give `bootagent prepare` the ref this instance runs: --ref {}",
                git.reference
            ),
        );
    };
    let layout = git::Layout::of(&git.dir);
    let standing = listed.map(|listed| {
        (
            seed::standing(&git.seed, held, &listed, &layout.repo),
            listed,
        )
    });
    let against = match standing {
        None => "the remote's could not be listed (see git)".to_string(),
        Some((seed::Standing::Current, _)) => "the remote's is the same: up to date".to_string(),
        Some((seed::Standing::Behind(Some(count)), listed)) => {
            format!("the remote's is at {listed}, {count} commit(s) later")
        }
        Some((seed::Standing::Behind(None), listed)) => {
            format!("the remote's is at {listed}, which the seed lacks")
        }
    };
    let detail = format!("{taken}, holds {} at {held}; {against}", git.reference);
    if layout.repo.exists() {
        return skip(format!(
            "{detail}; not used: a seed serves the first checkout, and this instance has one"
        ));
    }
    ok(detail)
}
