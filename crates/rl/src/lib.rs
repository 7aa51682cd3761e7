//! Reinforcement learning for ARTIST: the rewards of the paper (answer, format, tool
//! execution; state and function matching for function calling), advantages normalised
//! within each prompt's group, and the clipped, masked GRPO loss with its variants.

pub mod advantages;
pub mod format;
pub mod grpo;
pub mod prompts;
pub mod rewards;

pub use advantages::{
    AdvantageConfig, AdvantageEstimator, StdLevel, batch_std_scale, group_advantages, reward_sums, whiten,
    whitening_sums,
};
pub use format::{Segment, TagEvent};
pub use grpo::{
    Aggregation, GrpoConfig, GrpoStats, ImportanceLevel, KlEstimator, MicroBatching, TisLevel, TisMode, TrainRollout,
    grpo_loss, grpo_loss_measuring, token_weights, token_weights_global,
};
pub use rewards::{
    FcRewardWeights, FcRewards, MathRewardWeights, MathRewards, fc_format_rewards, math_rewards,
    math_rewards_with_tool, overlong_penalty,
};
