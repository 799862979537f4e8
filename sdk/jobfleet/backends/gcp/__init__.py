"""The Google Cloud backend: Firestore store, Cloud Run Jobs launcher, Pub/Sub events."""
