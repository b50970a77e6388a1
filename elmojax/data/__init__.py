"""The host side, numpy only: corpus readers and preparation, the tokenizer, vocabularies, the
character encoding, token ids, training streams, typed step batches and the prefetch thread."""
