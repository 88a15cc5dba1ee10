//! An annotated tag object's bytes, read as git writes them: its header (what it tags, under
//! which name) and the signature appended to its text.

use git2::Oid;

/// The first lines of a tag object, as git writes them (and `git fsck` requires them): `object`,
/// `type`, `tag`, in that order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagHeader {
    pub object: Oid,
    pub kind: String,
    pub name: String,
}

impl TagHeader {
    pub fn parse(data: &[u8]) -> Option<TagHeader> {
        let mut lines = data.split(|&b| b == b'\n');
        let mut field = |key: &str| {
            let line = lines.next()?.strip_prefix(key.as_bytes())?;
            String::from_utf8(line.strip_prefix(b" ")?.to_vec()).ok()
        };
        let object = Oid::from_str(&field("object")?).ok()?;
        let kind = field("type")?;
        let name = field("tag")?;
        Some(TagHeader { object, kind, name })
    }
}

/// Whether the tag object `data`, listed as `listed_as`, names `commit` and carries the ref's own
/// name: a signed tag moved under another name is an old release replayed, not this one.
pub(super) fn bound_to(data: &[u8], listed_as: &str, commit: Oid) -> Result<(), String> {
    let Some(header) = TagHeader::parse(data) else {
        return Err(
            "its object does not start with a tag's `object`, `type` and `tag` lines".into(),
        );
    };
    if header.kind != "commit" || header.object != commit {
        return Err(format!(
            "the tag object names {} {}, not commit {commit}",
            header.kind, header.object
        ));
    }
    let listed_name = listed_as.strip_prefix("refs/tags/").unwrap_or(listed_as);
    if listed_as != format!("refs/tags/{}", header.name) {
        return Err(format!(
            "the signed tag object is named {:?}, but the remote publishes it as {listed_name:?} \
             ({listed_as}): an old signed release replayed under a new name; sign a tag named \
             {listed_name:?}",
            header.name
        ));
    }
    Ok(())
}

/// A tag object's text and the signature appended to it, as git writes them.
pub(super) fn split_tag_signature(data: &[u8]) -> Option<(&[u8], &[u8])> {
    [
        "-----BEGIN SSH SIGNATURE-----",
        "-----BEGIN PGP SIGNATURE-----",
    ]
    .iter()
    .find_map(|marker| {
        let at = find(data, marker.as_bytes())?;
        (at == 0 || data[at - 1] == b'\n').then(|| data.split_at(at))
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tags_signature_is_split_from_its_text_at_the_line_that_starts_it() {
        let tag = b"object abc\ntype commit\ntag v1\n\nv1\n-----BEGIN SSH SIGNATURE-----\nU1NI\n-----END SSH SIGNATURE-----\n";
        let (payload, signature) = split_tag_signature(tag).unwrap();
        assert!(payload.ends_with(b"\nv1\n"));
        assert!(signature.starts_with(b"-----BEGIN SSH SIGNATURE-----"));
        // A message that merely quotes the marker mid-line is no signature.
        let quoted = b"object abc\ntag v1\n\nsee -----BEGIN PGP SIGNATURE----- here\n";
        assert!(split_tag_signature(quoted).is_none());
    }

    const COMMIT: &str = "5b1f0b7a3c6f2d3b4b1c0e9f8a7d6c5b4a3f2e1d";

    fn tag_object(object: &str, kind: &str, name: &str) -> Vec<u8> {
        format!(
            "object {object}\ntype {kind}\ntag {name}\ntagger t <t@t> 1 +0000\n\n{name}\n\
             -----BEGIN SSH SIGNATURE-----\nU1NI\n-----END SSH SIGNATURE-----\n"
        )
        .into_bytes()
    }

    #[test]
    fn a_tag_objects_header_names_its_object_type_and_name_in_gits_order() {
        let header = TagHeader::parse(&tag_object(COMMIT, "commit", "rel-1")).unwrap();
        assert_eq!(header.object.to_string(), COMMIT);
        assert_eq!(header.kind, "commit");
        assert_eq!(header.name, "rel-1");
        for broken in [
            format!("type commit\nobject {COMMIT}\ntag rel-1\n"),
            format!("object {COMMIT}\ntype commit\n\nrel-1\n"),
            "object nothex\ntype commit\ntag rel-1\n".to_string(),
            format!("object {COMMIT}\ntype  commit\ntagx rel-1\n"),
            String::new(),
        ] {
            assert_eq!(TagHeader::parse(broken.as_bytes()), None, "{broken:?}");
        }
    }

    #[test]
    fn a_tag_binds_its_commit_and_its_own_name() {
        let commit = Oid::from_str(COMMIT).unwrap();
        let tag = tag_object(COMMIT, "commit", "t-old");
        assert_eq!(bound_to(&tag, "refs/tags/t-old", commit), Ok(()));
        let err = bound_to(&tag, "refs/tags/t-renamed", commit).unwrap_err();
        assert!(
            err.contains("named \"t-old\", but the remote publishes it as \"t-renamed\""),
            "{err}"
        );
        let err = bound_to(&tag, "refs/heads/t-old", commit).unwrap_err();
        assert!(
            err.contains("publishes it as \"refs/heads/t-old\""),
            "{err}"
        );
        let other = Oid::from_str("1111111111111111111111111111111111111111").unwrap();
        let err = bound_to(&tag, "refs/tags/t-old", other).unwrap_err();
        assert!(
            err.contains(&format!("names commit {COMMIT}, not commit {other}")),
            "{err}"
        );
        let tree = tag_object(COMMIT, "tree", "t-old");
        assert!(bound_to(&tree, "refs/tags/t-old", commit).is_err());
    }
}
