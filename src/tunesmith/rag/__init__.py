"""Retrieval for the rag strategies: MiniLM embeddings, a usearch vector index, and document chunking."""
