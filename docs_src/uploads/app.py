import hashlib

from micropie import App, MultipartFileError


class UploadApp(App):
    async def upload(self, file, title="untitled"):
        digest = hashlib.sha256()
        size = 0
        try:
            async for chunk in file["content"]:  # chunks as they arrive
                digest.update(chunk)
                size += len(chunk)
        except MultipartFileError:
            return 400, "The upload did not complete"
        return {
            "title": title,
            "filename": file["filename"],
            "content_type": file["content_type"],
            "size": size,
            "sha256": digest.hexdigest(),
        }


app = UploadApp(max_body_size=100 * 1024 * 1024)  # up to 100 MiB
