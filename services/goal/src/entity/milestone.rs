//! The `milestones` table.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "milestones")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub tenant_id: String,
    pub display_name: String,
    pub description: String,
    /// `team` or `member`.
    pub owner_kind: String,
    pub owner_id: String,
    pub metric_id: String,
    pub start_date: String,
    pub end_date: String,
    pub target: i64,
    pub stretch_target: Option<i64>,
    /// JSON array of checkpoints.
    pub checkpoints: String,
    pub parent_id: Option<String>,
    pub state: String,
    pub next_review_date: Option<String>,
    pub revision_count: i32,
    pub final_value: Option<i64>,
    pub version: i64,
    pub create_time: i64,
    pub update_time: i64,
    pub activate_time: Option<i64>,
    pub close_time: Option<i64>,
    pub cancel_reason: Option<String>,
    /// The encoded `MilestoneAssessment` of the last create or change of
    /// terms.
    pub assessment: Option<Vec<u8>>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
