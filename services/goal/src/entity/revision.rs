//! The `milestone_revisions` table.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "milestone_revisions")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub milestone_id: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub revision_number: i32,
    pub tenant_id: String,
    pub reason: String,
    pub author: String,
    /// JSON of the terms before and after.
    pub previous_terms: String,
    pub new_terms: String,
    /// Comma-separated names of the changed parts.
    pub changed_fields: String,
    pub create_time: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
