"""The paper's studies at small scale: convergence, temperature, z-loss, CFG, head factorisation."""
