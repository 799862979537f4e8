"""The local cloud for development and tests: emulators, a Cloud Run stand-in, the
completion function behind a Firestore-to-CloudEvent bridge (`jobfleet dev up`)."""
