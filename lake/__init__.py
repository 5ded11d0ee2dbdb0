"""The lake on any fsspec URL: storage, run state, the commit protocol and the run lock."""
