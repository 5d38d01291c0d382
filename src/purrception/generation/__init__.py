"""Above the methods: seeded, batch-size-invariant generation of codes and images, and uncertainty tracing."""
