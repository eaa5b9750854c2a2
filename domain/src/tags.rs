//! A user's own tags and their assignments to the user's own workspaces (shared/spec/portal.md §2.14).
//!
//! One aggregate per user (id: the user's e-mail), so that names are unique per user (ignoring case) and the number
//! of tags is bounded, each decided on one state. A tag is named by an id chosen by the API, so renaming keeps its
//! assignments. Deleting a tag removes its assignments; a deleted workspace's assignments are dropped by the read
//! model (the workspace's own events say it is gone).

use std::collections::{BTreeMap, BTreeSet};

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::publishing::WorkspaceId;
use crate::values::{identifier, line, InvalidValue};

/// The longest tag name, in characters.
pub const MAX_TAG_NAME_CHARS: usize = 32;
/// The most tags one user may have.
pub const MAX_TAGS_PER_USER: usize = 100;

/// A tag's name: one line, trimmed, 1 to [`MAX_TAG_NAME_CHARS`] characters; unique among the user's tags, ignoring
/// case.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TagName(String);

impl TagName {
    /// See the type.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        line("name", raw, MAX_TAG_NAME_CHARS).map(Self)
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn folded(&self) -> String {
        self.0.to_lowercase()
    }
}

/// A tag's id (chosen by the API; 1–128 of `A-Z a-z 0-9 . _ -`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TagId(String);

impl TagId {
    /// See the type.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        identifier("tag", raw).map(Self)
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for TagId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tag {
    /// Its name.
    pub name: TagName,
    /// The workspaces it is assigned to.
    pub workspaces: BTreeSet<String>,
}

/// One user's tags.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserTags {
    tags: BTreeMap<String, Tag>,
    version: u64,
}

impl UserTags {
    /// A tag.
    pub fn get(&self, id: &str) -> Option<&Tag> {
        self.tags.get(id)
    }

    /// Every tag, by id.
    pub fn tags(&self) -> impl Iterator<Item = (&str, &Tag)> {
        self.tags.iter().map(|(id, tag)| (id.as_str(), tag))
    }

    fn check_name(&self, name: &TagName, except: Option<&TagId>) -> Result<(), TagError> {
        let folded = name.folded();
        if self
            .tags
            .iter()
            .any(|(id, tag)| Some(id.as_str()) != except.map(TagId::as_str) && tag.name.folded() == folded)
        {
            return Err(TagError::NameTaken(name.clone()));
        }
        Ok(())
    }

    fn known(&self, id: &TagId) -> Result<&Tag, TagError> {
        self.tags.get(id.as_str()).ok_or_else(|| TagError::UnknownTag(id.clone()))
    }
}

/// A request about one user's tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagCommand {
    /// Create a tag.
    Create { tag: TagId, name: TagName },
    /// Rename a tag.
    Rename { tag: TagId, name: TagName },
    /// Delete a tag and its assignments.
    Delete { tag: TagId },
    /// Assign a tag to one of the user's workspaces (the API checks it is theirs).
    Assign { tag: TagId, workspace: WorkspaceId },
    /// Remove a tag from a workspace.
    Unassign { tag: TagId, workspace: WorkspaceId },
}

/// What happened to one user's tags. **API Boundary:** stored; event types are the variant names, at `"1.0"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TagEvent {
    /// A tag was created.
    TagCreated { tag: TagId, name: TagName },
    /// A tag was renamed.
    TagRenamed { tag: TagId, name: TagName },
    /// A tag and its assignments were deleted.
    TagDeleted { tag: TagId },
    /// A tag was assigned to a workspace.
    TagAssigned { tag: TagId, workspace: WorkspaceId },
    /// A tag was removed from a workspace.
    TagUnassigned { tag: TagId, workspace: WorkspaceId },
}

impl DomainEvent for TagEvent {
    fn event_type(&self) -> String {
        match self {
            TagEvent::TagCreated { .. } => "TagCreated",
            TagEvent::TagRenamed { .. } => "TagRenamed",
            TagEvent::TagDeleted { .. } => "TagDeleted",
            TagEvent::TagAssigned { .. } => "TagAssigned",
            TagEvent::TagUnassigned { .. } => "TagUnassigned",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1.0".to_string()
    }
}

/// A tag rule a command would break.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TagError {
    /// No such tag.
    #[error("no tag {0}")]
    UnknownTag(TagId),
    /// The id is taken (ids are chosen by the API).
    #[error("tag {0} already exists")]
    DuplicateTag(TagId),
    /// Another of the user's tags has this name.
    #[error("you have a tag named {:?} already", .0.as_str())]
    NameTaken(TagName),
    /// The user has as many tags as allowed.
    #[error("at most {MAX_TAGS_PER_USER} tags per user")]
    TooManyTags,
}

impl Aggregate for UserTags {
    const TYPE: &'static str = "user_tags";
    type Command = TagCommand;
    type Event = TagEvent;
    type Error = TagError;
    type Services = ();

    async fn handle(&mut self, command: Self::Command, _: &(), sink: &EventSink<Self>) -> Result<(), Self::Error> {
        let event = match command {
            TagCommand::Create { tag, name } => {
                if self.tags.contains_key(tag.as_str()) {
                    return Err(TagError::DuplicateTag(tag));
                }
                self.check_name(&name, None)?;
                if self.tags.len() >= MAX_TAGS_PER_USER {
                    return Err(TagError::TooManyTags);
                }
                TagEvent::TagCreated { tag, name }
            }
            TagCommand::Rename { tag, name } => {
                if self.known(&tag)?.name == name {
                    return Ok(());
                }
                self.check_name(&name, Some(&tag))?;
                TagEvent::TagRenamed { tag, name }
            }
            TagCommand::Delete { tag } => {
                self.known(&tag)?;
                TagEvent::TagDeleted { tag }
            }
            TagCommand::Assign { tag, workspace } => {
                if self.known(&tag)?.workspaces.contains(workspace.as_str()) {
                    return Ok(());
                }
                TagEvent::TagAssigned { tag, workspace }
            }
            TagCommand::Unassign { tag, workspace } => {
                if !self.known(&tag)?.workspaces.contains(workspace.as_str()) {
                    return Ok(());
                }
                TagEvent::TagUnassigned { tag, workspace }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        self.version += 1;
        match event {
            TagEvent::TagCreated { tag, name } => {
                self.tags.insert(tag.0, Tag { name, workspaces: BTreeSet::new() });
            }
            TagEvent::TagRenamed { tag, name } => {
                if let Some(known) = self.tags.get_mut(tag.as_str()) {
                    known.name = name;
                }
            }
            TagEvent::TagDeleted { tag } => {
                self.tags.remove(tag.as_str());
            }
            TagEvent::TagAssigned { tag, workspace } => {
                if let Some(known) = self.tags.get_mut(tag.as_str()) {
                    known.workspaces.insert(workspace.to_string());
                }
            }
            TagEvent::TagUnassigned { tag, workspace } => {
                if let Some(known) = self.tags.get_mut(tag.as_str()) {
                    known.workspaces.remove(workspace.as_str());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use cqrs_es::test::TestFramework;

    use super::*;

    fn id(raw: &str) -> TagId {
        TagId::parse(raw).unwrap()
    }

    fn name(raw: &str) -> TagName {
        TagName::parse(raw).unwrap()
    }

    fn created(tag: &str, called: &str) -> TagEvent {
        TagEvent::TagCreated { tag: id(tag), name: name(called) }
    }

    #[test]
    fn names_are_short_single_lines_unique_per_user_ignoring_case() {
        for bad in ["", "  ", "a\nb", &"x".repeat(33)] {
            assert_eq!(TagName::parse(bad).unwrap_err().field, "name", "{bad:?}");
        }
        TestFramework::<UserTags>::with(())
            .given(vec![created("t1", "Frontend")])
            .when(TagCommand::Create { tag: id("t2"), name: name("frontend") })
            .then_expect_error(TagError::NameTaken(name("frontend")));
        TestFramework::<UserTags>::with(())
            .given(vec![created("t1", "Frontend"), created("t2", "Backend")])
            .when(TagCommand::Rename { tag: id("t2"), name: name("FRONTEND") })
            .then_expect_error(TagError::NameTaken(name("FRONTEND")));
        TestFramework::<UserTags>::with(())
            .given(vec![created("t1", "Frontend")])
            .when(TagCommand::Rename { tag: id("t1"), name: name("frontend") })
            .then_expect_events(vec![TagEvent::TagRenamed { tag: id("t1"), name: name("frontend") }]);
    }

    #[test]
    fn a_user_has_at_most_a_hundred_tags() {
        let many: Vec<TagEvent> = (0..MAX_TAGS_PER_USER).map(|n| created(&format!("t{n}"), &format!("n{n}"))).collect();
        TestFramework::<UserTags>::with(())
            .given(many)
            .when(TagCommand::Create { tag: id("t-more"), name: name("more") })
            .then_expect_error(TagError::TooManyTags);
    }

    #[test]
    fn assignments_are_idempotent_and_go_with_their_tag() {
        let ws = WorkspaceId::parse("ws-1").unwrap();
        let assigned = vec![created("t1", "a"), TagEvent::TagAssigned { tag: id("t1"), workspace: ws.clone() }];
        TestFramework::<UserTags>::with(())
            .given(assigned.clone())
            .when(TagCommand::Assign { tag: id("t1"), workspace: ws.clone() })
            .then_expect_events(vec![]);
        TestFramework::<UserTags>::with(())
            .given(vec![created("t1", "a")])
            .when(TagCommand::Unassign { tag: id("t1"), workspace: ws.clone() })
            .then_expect_events(vec![]);
        TestFramework::<UserTags>::with(())
            .given(vec![])
            .when(TagCommand::Assign { tag: id("t9"), workspace: ws.clone() })
            .then_expect_error(TagError::UnknownTag(id("t9")));
        let mut state = UserTags::default();
        for event in assigned {
            state.apply(event);
        }
        state.apply(TagEvent::TagDeleted { tag: id("t1") });
        assert!(state.get("t1").is_none());
    }
}
