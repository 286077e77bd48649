"""Uploading a saved model folder to the Hugging Face Hub as it is: our model card, weights, config, processor, code."""

IGNORED = ["checkpoint-*", "checkpoint-*/**", "*.partial", "runs/**"]


def push_model_folder(folder, repo_id: str, token=None, private=None, commit_message="Upload scInterpreter model"):
    """Creates `repo_id` if needed and uploads `folder` (Trainer's own `push_to_hub` would first overwrite the
    folder's README.md with its generic card). Returns the repo id."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    repo = api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(repo_id=repo.repo_id, folder_path=str(folder), commit_message=commit_message,
                      ignore_patterns=IGNORED)
    return repo.repo_id
