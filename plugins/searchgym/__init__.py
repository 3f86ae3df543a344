"""SearchGym (UserRL): answer Bamboogle questions with at most five web searches."""
