"""The tricks: one file per trick, each registering itself and any parts it adds to the harness."""
