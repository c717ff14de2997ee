"""Reinforcement-learning pieces for prompt policies (RELIEF's hybrid PPO; Zhu et al., official code
JasonZhujp/RELIEF): returns and advantages, running reward normalisation, the hybrid discrete/continuous
actors, the critic and the PPO losses, each pinned in ``tests/rl`` to the official formulas."""
