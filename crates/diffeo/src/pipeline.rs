//! From files to models and back.
