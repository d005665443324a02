"""One run: the runner, the agent loop, context trimming, the live trace, the records it writes, and replay."""
