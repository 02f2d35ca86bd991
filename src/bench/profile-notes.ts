/**
 * Hand-written findings of a separate `node --cpu-prof` run, appended to docs/BENCHMARKS.md as
 * "What dominates the costs". Not refreshed by the bench itself: update after re-profiling.
 */
export const PROFILE_NOTES = '';
