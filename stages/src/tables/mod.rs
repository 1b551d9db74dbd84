//! Tables: expression in the layouts people have, and ordered name mappings for params.

pub mod expression;
pub mod ordered;
