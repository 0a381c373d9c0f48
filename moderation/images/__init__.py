"""Images of posts: intake (limits, sanitizing), hashes, hash lists and matching, the store.

Pure building blocks: no route, no Kafka, no database. The modules:

- `intake`: `sanitize` / `prepare` an upload (limits by content, EXIF stripped, re-encoded);
- `pool`: `DecodePool`, the same in killable worker processes under a time budget;
- `hashes`: SHA-256, MD5, PDQ and Hamming distances;
- `hashlists`: hash lists per category (files or memory) and `HashMatcher`;
- `store`: the content-addressed object store (`LocalImageStore`, `S3ImageStore`).

Callers import from the defining module.
"""
