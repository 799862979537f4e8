"""The local cloud for development and tests: emulators, a Cloud Run stand-in, the
completion function fed by the Firestore emulator's triggers through a relay that
sends them as Eventarc does (`jobfleet dev up`)."""
