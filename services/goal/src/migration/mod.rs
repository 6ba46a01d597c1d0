//! Schema migrations of the goal service, applied in order by
//! [`Migrator`]. Safe to run twice: applied migrations are recorded.

use sea_orm_migration::prelude::*;

mod m20261128_000001_init;

/// The goal service's migrations.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(m20261128_000001_init::Migration)]
    }

    fn migration_table_name() -> DynIden {
        Alias::new("goal_migrations").into_iden()
    }
}
