//! The catalog rule: which blueprints a caller's catalog lists, and which of them they may launch
//! (shared/spec/portal.md §2.3–2.5, decided in docs/adr/0017-blueprint-aggregate.md).
//!
//! | state      | listed for                         | launchable by       |
//! |------------|------------------------------------|---------------------|
//! | `enabled`  | admins, members the ACL allows     | the same            |
//! | `testing`  | admins, members the ACL allows, as "coming soon" | admins only |
//! | `disabled` | nobody                             | nobody              |
//! | removed    | nobody                             | nobody              |
//!
//! Admins pass every ACL: they can edit it, so it could not keep them out, and testing a blueprint before enabling
//! it is what the testing state is for. The ACL applies to testing blueprints too, so a builder outside the ACL never
//! learns that one is coming.

use serde::{Deserialize, Serialize};

use super::acl::Acl;
use super::BlueprintState;
use crate::Email;

/// How a blueprint appears in one caller's catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogEntry {
    /// Shown with the "Coming Soon" badge (the blueprint is being tested).
    pub coming_soon: bool,
    /// The caller may create a workspace from it.
    pub launchable: bool,
}

/// The catalog rule: `None` when the blueprint is not listed for the caller. Projections and the API call this on
/// what they store; [`super::Blueprint::catalog_entry`] calls it on the aggregate.
pub fn catalog_entry(
    state: BlueprintState,
    removed: bool,
    acl: &Acl,
    caller: &Email,
    is_admin: bool,
) -> Option<CatalogEntry> {
    if removed || !(is_admin || acl.allows(caller)) {
        return None;
    }
    match state {
        BlueprintState::Enabled => Some(CatalogEntry { coming_soon: false, launchable: true }),
        BlueprintState::Testing => Some(CatalogEntry { coming_soon: true, launchable: is_admin }),
        BlueprintState::Disabled => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blueprint::acl::AclRule;

    #[test]
    fn the_catalog_table() {
        use BlueprintState::{Disabled, Enabled, Testing};
        let open = Acl::open();
        let company = Acl::new(vec![AclRule::parse("domain", "company.com").expect("valid")]).expect("valid");
        let inside = Email::parse("ada@company.com").expect("valid");
        let outside = Email::parse("bob@elsewhere.net").expect("valid");
        let listed = |launchable| Some(CatalogEntry { coming_soon: false, launchable });
        let soon = |launchable| Some(CatalogEntry { coming_soon: true, launchable });
        #[rustfmt::skip]
        let table = [
            // state,  removed, acl,       caller,   admin, expected
            (Enabled,  false,   &open,     &outside, false, listed(true)),
            (Enabled,  false,   &company,  &inside,  false, listed(true)),
            (Enabled,  false,   &company,  &outside, false, None),
            (Enabled,  false,   &company,  &outside, true,  listed(true)),
            (Testing,  false,   &open,     &outside, false, soon(false)),
            (Testing,  false,   &open,     &outside, true,  soon(true)),
            (Testing,  false,   &company,  &inside,  false, soon(false)),
            (Testing,  false,   &company,  &outside, false, None),
            (Testing,  false,   &company,  &outside, true,  soon(true)),
            (Disabled, false,   &open,     &inside,  false, None),
            (Disabled, false,   &open,     &inside,  true,  None),
            (Enabled,  true,    &open,     &inside,  false, None),
            (Enabled,  true,    &open,     &inside,  true,  None),
            (Testing,  true,    &open,     &inside,  true,  None),
        ];
        for (state, removed, acl, caller, is_admin, expected) in table {
            assert_eq!(
                catalog_entry(state, removed, acl, caller, is_admin),
                expected,
                "{state:?} removed={removed} {acl:?} {caller} admin={is_admin}"
            );
        }
    }
}
